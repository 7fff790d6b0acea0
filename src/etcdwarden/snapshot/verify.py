"""``snapshot verify``: prove a snapshot file, or a whole backup directory, is intact.

For a snapshot file, in this order (the first problem raises :class:`SnapshotCorrupt`):

1. the bbolt file opens: a valid meta page exists and the file is not truncated;
2. both meta pages validate (a snapshot's two meta pages are always both valid);
3. the sha256 trailer is present (etcdutl's rule: ``size % 512 == 32``; database files are whole
   pages, so a file cut by exactly 32 bytes or a raw ``member/snap/db`` copy has none) and equals
   sha256 of the database bytes. A file without a trailer is refused, as ``etcdutl snapshot restore``
   refuses it, unless ``skip_hash_check`` (``--skip-hash-check``) accepts it: it must then be whole
   pages, only its structure can be checked, and the result says so (a flipped byte in a stale,
   unreachable page or inside a value cannot be detected then). A trailer that is present is always
   checked;
4. the full page walk of every bucket (see :mod:`.bbolt` for the checks);
5. every entry of the ``key`` bucket decodes: 17-byte revision keys (18 with the tombstone mark),
   values that parse as ``mvccpb.KeyValue`` whose ``mod_revision`` matches the key's revision;
   the ``key`` and ``meta`` buckets exist, ``meta/consistent_index`` is 8 bytes.

For a backup (its manifest read by :mod:`etcdwarden.format.manifest`, which already checked that
every file it lists carries its timestamp): every file exists with the recorded size and sha256, and
the snapshot passes the checks above (encrypted snapshots need the age identity; without it only their
sha256 is checked, and the result says so). Finding the backups of a directory or repository is the
catalog's job (:mod:`etcdwarden.restore.source`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etcdwarden.snapshot.bbolt import TRAILER_SIZE, BoltFile, BucketRef, Leaf
from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError
from etcdwarden.snapshot.kvcheck import check_key_leaf, check_meta_leaf
from etcdwarden.snapshot.source import detect_format, open_snapshot
from etcdwarden.snapshot.status import KEY_BUCKET, META_BUCKET, SnapshotStatus, scan

if TYPE_CHECKING:
    from etcdwarden.format.manifest import Manifest

NO_TRAILER_NOTE = "no sha256 trailer: structure checked only (--skip-hash-check)"
SKIP_HASH_FLAG = "--skip-hash-check"


def missing_trailer(name: str) -> SnapshotCorrupt:
    """The error for a snapshot without its sha256 trailer (etcdutl: ``snapshot missing hash``)."""
    return SnapshotCorrupt(
        f"{name}: no sha256 trailer (the snapshot is missing its hash: cut by 32 bytes, or a raw member/snap/db "
        f"copy), so its integrity cannot be proven; pass {SKIP_HASH_FLAG} to accept it on its structure alone"
    )
_CHUNK = 1 << 20


@dataclass
class SnapshotReport:
    """What a successful verification of one snapshot found."""

    path: str
    sha256: str  # "ok" or "absent"
    status: SnapshotStatus
    pages: int
    key_entries: int
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": True, "sha256": self.sha256, **self.status.as_json(),
                "pagesChecked": self.pages, "keyEntries": self.key_entries, "notes": self.notes}


@dataclass
class BackupReport:
    """What a successful verification of a backup directory found."""

    path: str
    backups: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[SnapshotReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": True, "backups": self.backups,
                "snapshots": [s.as_json() for s in self.snapshots], "notes": self.notes}


def file_sha256(path: Path, length: int | None = None) -> str:
    """Hex sha256 of the first ``length`` bytes of ``path`` (all of it by default), streamed."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    left = length
    with open(path, "rb", buffering=0) as f:
        while left is None or left > 0:
            n = f.readinto(view if left is None or left >= _CHUNK else view[:left])
            if not n:
                break
            h.update(view[:n])
            if left is not None:
                left -= n
    return h.hexdigest()


class _KeyChecker:
    """Decodes every ``key`` bucket entry and checks it (a leaf visitor for :func:`scan`)."""

    def __init__(self) -> None:
        self.entries = 0
        self.seen: set[bytes] = set()

    def __call__(self, bucket: BucketRef, leaf: Leaf) -> None:
        self.seen.add(bucket.name)
        if bucket.name == META_BUCKET:
            check_meta_leaf(leaf)
        elif bucket.name == KEY_BUCKET:
            self.entries += check_key_leaf(leaf)


def verify_db(path: str | os.PathLike[str], display: str | None = None,
              skip_hash_check: bool = False) -> SnapshotReport:
    """Verify a plain bbolt file (a snapshot with its trailer; a raw ``member/snap/db`` only with
    ``skip_hash_check``)."""
    name = display or str(path)
    try:
        with BoltFile(path) as db:
            problems = db.meta_problems()
            if problems:
                raise SnapshotCorrupt(f"{name}: {problems[0]}")
            notes: list[str] = []
            sha = "absent"
            if db.has_trailer:
                expected = (db.read_trailer() or b"").hex()
                actual = file_sha256(db.path, db.file_size - TRAILER_SIZE)
                if actual != expected:
                    raise SnapshotCorrupt(
                        f"{name}: sha256 mismatch: the trailer says {expected}, the database hashes to {actual}"
                    )
                sha = "ok"
                if db.data_size != db.size:
                    raise SnapshotCorrupt(
                        f"{name}: {db.data_size - db.size} bytes between the database end and the sha256 trailer"
                    )
            elif db.file_size % db.page_size:
                raise SnapshotCorrupt(
                    f"{name}: {db.file_size} bytes is neither whole pages nor pages plus a 32-byte sha256 "
                    "trailer: a truncated snapshot?"
                )
            elif not skip_hash_check:
                raise missing_trailer(name)
            else:
                notes.append(NO_TRAILER_NOTE)
            checker = _KeyChecker()
            status, walk = scan(db, checker)
            for required in (KEY_BUCKET, b"meta"):
                if required not in checker.seen and not _bucket_exists(db, required):
                    raise SnapshotCorrupt(f"{name}: no {required.decode()!r} bucket: not an etcd database")
            return SnapshotReport(name, sha, status, walk.pages, checker.entries, notes)
    except SnapshotCorrupt as e:
        msg = str(e)
        raise SnapshotCorrupt(msg if msg.startswith(name) else f"{name}: {msg}") from e


def _bucket_exists(db: BoltFile, name: bytes) -> bool:
    return any(b.name == name for b in db.walk().buckets())


def verify_snapshot(path: str | os.PathLike[str], identity: str | os.PathLike[str] | None = None,
                    skip_hash_check: bool = False, work_dir: Path | None = None) -> SnapshotReport:
    """Verify any snapshot input (``.db``, ``.db.zst``, ``.age`` with ``identity``).

    A decoded copy is made in a private directory in ``work_dir`` (default: beside ``path``).
    """
    notes: list[str] = []
    with open_snapshot(path, identity=identity, work_dir=work_dir, notes=notes) as plain:
        report = verify_db(plain, display=str(path), skip_hash_check=skip_hash_check)
    report.notes[:0] = notes
    return report


def verify_backup(
    m: Manifest, directory: Path, label: str, identity: str | os.PathLike[str] | None = None,
    skip_hash_check: bool = False, work_dir: Path | None = None, *, proven: Collection[str] = (),
    missing_ok: Collection[str] = (),
) -> tuple[dict[str, Any], SnapshotReport | None, list[str]]:
    """Verify the backup of manifest ``m`` whose files are in ``directory``; return its summary, snapshot report
    and notes. ``label`` names the manifest in messages; ``proven``: files already hashed against the manifest
    (on their way down from a repository); ``missing_ok``: files that may be absent (a bundle accepted as missing).
    """
    for name, f in sorted(m.files.items()):
        p = directory / name
        if not p.is_file():
            if name in missing_ok:
                continue
            raise SnapshotCorrupt(f"{label}: {name} is listed but missing")
        size = p.stat().st_size
        if size != f.size:
            raise SnapshotCorrupt(f"{p}: size {size} but the manifest records {f.size}")
        if name in proven:
            continue
        digest = file_sha256(p)
        if digest != f.sha256:
            raise SnapshotCorrupt(f"{p}: sha256 {digest} but the manifest records {f.sha256}")
    notes: list[str] = []
    report: SnapshotReport | None = None
    snap_path = directory / m.snapshot_file
    if detect_format(snap_path) == "age" and identity is None:
        notes.append(f"{m.snapshot_file} is encrypted: sha256 checked, contents not (give --identity)")
    else:
        report = verify_snapshot(snap_path, identity, skip_hash_check, work_dir)
    summary = {"manifest": f"backup_{m.timestamp}.json", "timestamp": m.timestamp, "files": sorted(m.files),
               "format": m.source_format}
    return summary, report, notes


def verify_path(path: str | os.PathLike[str], identity: str | os.PathLike[str] | None = None,
                skip_hash_check: bool = False) -> SnapshotReport:
    """Verify one snapshot file (backups and repositories: :func:`etcdwarden.restore.source.verify_location`)."""
    p = Path(path)
    if p.is_dir():
        raise SnapshotInputError(f"{p} is a directory, not a snapshot file")
    if not p.exists():
        raise SnapshotInputError(f"{p}: no such file or directory")
    return verify_snapshot(p, identity, skip_hash_check)

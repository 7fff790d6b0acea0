"""Find the backup a restore starts from, and prove it intact before anything is changed.

``BACKUP`` may be a backup directory (its latest backup, or the one of ``--id TS``), a manifest
(``backup_<ts>.json``) or a snapshot file (``.db``, ``.db.zst``, ``.db.age``). A snapshot file named
``snapshot_<ts>...`` next to its ``backup_<ts>.json`` is treated as that backup (manifest checks
included); any other snapshot file is restored on its own sha256 trailer and structure.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.errors import SafetyRefusal
from etcdwarden.etcd.api.mvccpb import kv_pb2
from etcdwarden.snapshot.bbolt import BoltFile, has_trailer
from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError
from etcdwarden.snapshot.manifest import MANIFEST_RE, SNAPSHOT_RE, TS
from etcdwarden.snapshot.source import detect_format
from etcdwarden.snapshot.status import KEY_BUCKET, iter_bucket
from etcdwarden.snapshot.verify import SnapshotReport, file_sha256, missing_trailer, verify_backup, verify_snapshot

KUBERNETES_PREFIXES = (b"/registry/", b"/kubernetes.io/")


@dataclass
class Backup:
    """One backup as found on disk (the manifest is ``None`` for a bare snapshot file)."""

    snapshot: Path
    manifest_path: Path | None = None
    manifest: dict[str, Any] | None = None
    resources: Path | None = None
    identity: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def timestamp(self) -> str | None:
        return str(self.manifest["timestamp"]) if self.manifest and self.manifest.get("timestamp") else None

    @property
    def server_version(self) -> str | None:
        etcd = (self.manifest or {}).get("etcd") or {}
        v = etcd.get("server_version")
        return str(v) if v else None

    @property
    def release(self) -> str | None:
        v = (self.manifest or {}).get("release")
        return str(v) if v else None

    @property
    def cluster_id(self) -> str | None:
        v = (self.manifest or {}).get("cluster_id")
        return str(v) if v else None

    @property
    def revision(self) -> int | None:
        m = self.manifest or {}
        st = m.get("status") or {}
        v = st.get("revision", m.get("revision"))
        return int(v) if v is not None else None

    @property
    def total_key(self) -> int | None:
        v = ((self.manifest or {}).get("status") or {}).get("totalKey")
        return int(v) if v is not None else None

    @property
    def label(self) -> str:
        return str(self.manifest_path or self.snapshot)

    def describe(self) -> dict[str, Any]:
        return {"snapshot": str(self.snapshot), "manifest": str(self.manifest_path) if self.manifest_path else None,
                "resources": str(self.resources) if self.resources else None, "timestamp": self.timestamp,
                "etcd_version": self.server_version, "release": self.release, "cluster_id": self.cluster_id,
                "revision": self.revision}


def _manifests(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if MANIFEST_RE.match(p.name)), key=lambda p: p.name)


def find_backup(path: Path, backup_id: str | None = None, identity: Path | None = None) -> Backup:
    """Resolve ``BACKUP`` (directory, manifest or snapshot file) to one :class:`Backup`."""
    if backup_id is not None and not re.fullmatch(TS, backup_id):
        raise SnapshotInputError(f"--id {backup_id!r}: expected a backup timestamp YYYY-MM-DD_HHMMSS")
    if not path.exists():
        raise SnapshotInputError(f"{path}: no such file or directory")
    if path.is_dir():
        found = _manifests(path)
        if backup_id is not None:
            found = [p for p in found if p.name == f"backup_{backup_id}.json"]
            if not found:
                raise SnapshotInputError(f"{path}: no backup {backup_id} (no backup_{backup_id}.json)")
        if not found:
            raise SnapshotInputError(f"{path}: no backup manifest (backup_<YYYY-MM-DD_HHMMSS>.json) in this "
                                     "directory; give a snapshot file to restore it without a manifest")
        return _from_manifest(found[-1], identity)
    if MANIFEST_RE.match(path.name):
        return _from_manifest(path, identity)
    m = SNAPSHOT_RE.match(path.name)
    if m:
        sibling = path.parent / f"backup_{m.group(1)}.json"
        if sibling.is_file():
            b = _from_manifest(sibling, identity)
            if b.snapshot.resolve() != path.resolve():
                raise SnapshotCorrupt(f"{sibling} lists {b.snapshot.name}, not {path.name}")
            return b
    if backup_id is not None:
        raise SnapshotInputError("--id selects a backup in a backup directory; BACKUP is a file")
    return Backup(snapshot=path, identity=identity,
                  notes=[f"{path.name} has no manifest: only its sha256 trailer and structure can be checked, "
                         "and its etcd version is unknown"])


def _from_manifest(path: Path, identity: Path | None) -> Backup:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SnapshotCorrupt(f"{path}: cannot read the manifest: {e}") from e
    if not isinstance(doc, dict):
        raise SnapshotCorrupt(f"{path}: the manifest is not a JSON object")
    snap = (doc.get("snapshot") or {}).get("file")
    if not snap:
        snap = next((n for n in (doc.get("files") or {}) if SNAPSHOT_RE.match(str(n))), None)
    if not snap or "/" in str(snap):
        raise SnapshotCorrupt(f"{path}: the manifest names no snapshot file")
    b = Backup(snapshot=path.parent / str(snap), manifest_path=path, manifest=doc, identity=identity)
    b.resources = _resources(b, path, doc)
    return b


def _resources(b: Backup, path: Path, doc: dict[str, Any]) -> Path | None:
    res = doc.get("resources")
    if not res:
        return None
    name = str(res.get("file") or "")
    candidates = [path.parent / name]
    if res.get("directory") and name not in (doc.get("files") or {}):  # stored in a separate directory
        candidates.append(Path(str(res["directory"])) / name)
    for c in candidates:
        if name and c.is_file():
            return c
    b.notes.append(f"resources bundle {name} not found (looked in {', '.join(str(c.parent) for c in candidates)})")
    return None


def check_trailer(b: Backup, skip_hash_check: bool) -> list[str]:
    """Refuse, before anything is changed, a plain snapshot without its sha256 trailer (etcdutl's rule).

    Encoded snapshots (``.zst``, ``.age``) are checked once decoded, by :func:`verify`.
    """
    if detect_format(b.snapshot) != "db" or has_trailer(b.snapshot.stat().st_size):
        return []
    if not skip_hash_check:
        raise missing_trailer(str(b.snapshot))
    return [f"{b.snapshot.name} has no sha256 trailer: restoring it on its structure alone (--skip-hash-check)"]


def check_resources(b: Backup, forced: bool) -> list[str]:
    """Refuse a backup whose manifest lists a resources bundle that is missing or altered."""
    res = (b.manifest or {}).get("resources")
    if not res:
        return []
    name = str(res.get("file"))
    if b.resources is None:
        if forced:
            return [f"the resources bundle {name} is missing; restoring without it (--force=resources)"]
        raise SafetyRefusal(
            f"the backup lists the resources bundle {name} (static pod resources, certificates, encryption "
            "keys) but it is not next to the manifest nor in its recorded directory "
            f"{res.get('directory')}: a restore without it may leave encrypted data unreadable",
            "--force=resources")
    sha = res.get("sha256")
    if sha and b.resources.parent != (b.manifest_path or b.snapshot).parent:
        size = b.resources.stat().st_size
        if res.get("size") is not None and size != int(res["size"]):
            raise SnapshotCorrupt(f"{b.resources}: size {size} but the manifest records {res['size']}")
        digest = file_sha256(b.resources)
        if digest != sha:
            raise SnapshotCorrupt(f"{b.resources}: sha256 {digest} but the manifest records {sha}")
    return []


def verify(b: Backup, skip_hash_check: bool = False, work_dir: Path | None = None) -> SnapshotReport | None:
    """Every check ``snapshot verify`` makes (sha256 of each file, trailer, structure); raise on damage.

    A resources bundle already accepted as missing (``--force=resources``) is the one file not required;
    a snapshot without its sha256 trailer is accepted only with ``skip_hash_check``. A decoded copy of an
    encoded snapshot is made in a private directory in ``work_dir`` (default: beside the snapshot).
    """
    if b.manifest_path is not None and b.manifest is not None and b.resources is None and b.manifest.get("resources"):
        for name, entry in (b.manifest.get("files") or {}).items():
            p = b.manifest_path.parent / str(name)
            if not p.is_file() and name == b.manifest["resources"].get("file"):
                continue
            digest = file_sha256(p) if p.is_file() else "missing"
            if digest != entry.get("sha256"):
                raise SnapshotCorrupt(f"{p}: sha256 {digest} but the manifest records {entry.get('sha256')}")
        one = verify_snapshot(b.snapshot, b.identity, skip_hash_check, work_dir)
        b.notes.extend(one.notes)
        return one
    if b.manifest_path is not None:
        _summary, report, notes = verify_backup(b.manifest_path, b.identity, skip_hash_check, work_dir)
        b.notes.extend(notes)
        return report
    single = verify_snapshot(b.snapshot, b.identity, skip_hash_check, work_dir)
    b.notes.extend(single.notes)
    return single


@dataclass(frozen=True)
class SnapshotFacts:
    """What a restored member must serve: the live keys at the snapshot's revision.

    ``revision`` is the newest revision in the ``key`` bucket (what ``snapshot status`` reports and what
    ``etcdutl --bump-revision`` adds to); ``compact_revision`` the ``finishedCompactRev`` of the ``meta`` bucket.
    """

    revision: int
    live_keys: int
    kubernetes_keys: int
    compact_revision: int = 0

    def served_revision(self, bump: int = 0) -> int:
        """The revision an etcd started on the restored data reports.

        etcd starts at the compaction revision when that is newer than every key left (the keys of the last
        revisions were deletions the compaction removed); a bump marks the bumped revision compacted instead.
        """
        return self.revision + bump if bump > 0 else max(self.revision, self.compact_revision)


def _compact_revision(db: BoltFile) -> int:
    for key, value in iter_bucket(db, b"meta"):
        if key == b"finishedCompactRev" and len(value) >= 8:
            return int.from_bytes(value[:8], "big", signed=True)
    return 0


def snapshot_facts(plain: str | os.PathLike[str], stop_at_kubernetes: bool = False) -> SnapshotFacts:
    """Count the live keys (and Kubernetes keys) of a plain bbolt file by replaying its ``key`` bucket.

    With ``stop_at_kubernetes`` the scan stops at the first Kubernetes key (only its presence is wanted;
    the revision is then not the snapshot's).
    """
    live: set[bytes] = set()
    latest = 0
    with BoltFile(plain) as db:
        compacted = _compact_revision(db)
        for key, value in iter_bucket(db, KEY_BUCKET):
            if len(key) >= 8:
                latest = int.from_bytes(key[:8], "big", signed=True)
            if not value:
                continue  # the --bump-revision marker
            kv = kv_pb2.KeyValue()
            kv.ParseFromString(value)
            if stop_at_kubernetes and kv.key.startswith(KUBERNETES_PREFIXES):
                return SnapshotFacts(latest, -1, 1, compacted)
            if len(key) == 18 and key[17] == 0x74:
                live.discard(kv.key)
            else:
                live.add(kv.key)
    k8s = sum(1 for k in live if k.startswith(KUBERNETES_PREFIXES))
    return SnapshotFacts(latest, len(live), k8s, compacted)

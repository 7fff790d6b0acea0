"""Prove the backup a restore starts from intact before anything is changed, and read its facts.

Where the backup comes from (a directory, a manifest, a snapshot file or any repository URL) is
:mod:`.source`: this module checks what was found (the sha256 trailer, the resources bundle, every file
against the manifest, the bbolt structure) and counts what a restored member must serve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from etcdwarden.errors import SafetyRefusal
from etcdwarden.etcd.api.mvccpb import kv_pb2
from etcdwarden.restore.source import Backup, find_backup
from etcdwarden.snapshot.bbolt import BoltFile, has_trailer
from etcdwarden.snapshot.errors import SnapshotCorrupt
from etcdwarden.snapshot.source import detect_format
from etcdwarden.snapshot.status import KEY_BUCKET, iter_bucket
from etcdwarden.snapshot.verify import SnapshotReport, file_sha256, missing_trailer, verify_backup, verify_snapshot

KUBERNETES_PREFIXES = (b"/registry/", b"/kubernetes.io/")

__all__ = ["Backup", "SnapshotFacts", "check_resources", "check_trailer", "find_backup", "snapshot_facts", "verify"]


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
    m = b.manifest
    res = m.resources if m is not None else None
    if m is None or res is None:
        return []
    if b.resources is None:
        if forced:
            return [f"the resources bundle {res.file} is missing; restoring without it (--force=resources)"]
        kept = f" nor in its recorded directory {res.directory}" if res.directory else ""
        raise SafetyRefusal(
            f"the backup lists the resources bundle {res.file} (static pod resources, certificates, encryption "
            f"keys) but it is not next to the manifest{kept}: a restore without it may leave encrypted data "
            "unreadable", "--force=resources")
    if res.file not in m.files and res.sha256:  # a bundle kept outside the repository: check it here
        size = b.resources.stat().st_size
        if res.size is not None and size != res.size:
            raise SnapshotCorrupt(f"{b.resources}: size {size} but the manifest records {res.size}")
        digest = file_sha256(b.resources)
        if digest != res.sha256:
            raise SnapshotCorrupt(f"{b.resources}: sha256 {digest} but the manifest records {res.sha256}")
    return []


def verify(b: Backup, skip_hash_check: bool = False, work_dir: Path | None = None) -> SnapshotReport | None:
    """Every check ``snapshot verify`` makes (size and sha256 of each file, trailer, structure); raise on damage.

    A resources bundle already accepted as missing (``--force=resources``) is the one file not required;
    a snapshot without its sha256 trailer is accepted only with ``skip_hash_check``. A decoded copy of an
    encoded snapshot is made in a private directory in ``work_dir`` (default: beside the snapshot). Files
    proven on the way down from an object store (:attr:`Backup.proven`) are not hashed again.
    """
    m = b.manifest
    if m is not None and b.directory is not None:
        missing_ok = {m.resources.file} if m.resources is not None and b.resources is None else set()
        _summary, report, notes = verify_backup(m, b.directory, b.label, b.identity, skip_hash_check, work_dir,
                                                proven=b.proven, missing_ok=missing_ok)
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

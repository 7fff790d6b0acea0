"""What each member's data directory holds, read offline: how far a member got when the cluster lost quorum.

With quorum lost no member can answer over the API, but the data directories can still be read:

* the bbolt backend ``member/snap/db`` (our reader, :mod:`etcdwarden.snapshot.bbolt`): its structure
  (every page walked, every key decoded, as ``snapshot verify`` does), its revision (the newest key) and,
  from the ``meta`` bucket, the raft index and term of the last applied entry (``consistent_index``,
  ``term``) and the compaction revision;
* the WAL ``member/wal`` (:mod:`etcdwarden.snapshot.wal`): the HardState's commit index and the term of
  the entry there, which is what ``etcd --force-new-cluster`` keeps (later entries are discarded).

A member's *position* is ``(term, index)`` of the newest entry it holds committed (the WAL's, or the
backend's when the WAL says less); positions compare as raft compares logs: term first, then index.
The most advanced usable survivor is the one a quorum recovery should start from; every other survivor's
data is moved aside (never deleted).

Only data directories on this host can be read (remote members are reported as such).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.restore.spec import ClusterSpec, MemberSpec
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError
from etcdwarden.snapshot.status import iter_bucket
from etcdwarden.snapshot.verify import verify_db
from etcdwarden.snapshot.wal import WalState, read_wal

OK, DAMAGED, ABSENT, REMOTE = "ok", "damaged", "absent", "remote"


@dataclass
class DataDirSurvey:
    """One member's data directory as read offline."""

    name: str
    host: str
    data_dir: str
    state: str = ABSENT  # ok | damaged | absent | remote
    revision: int | None = None  # the backend's newest revision
    compact_revision: int = 0
    applied_index: int | None = None  # meta/consistent_index
    applied_term: int | None = None  # meta/term (etcd 3.5+)
    wal: WalState | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.state == OK

    @property
    def position(self) -> tuple[int, int] | None:
        """``(term, index)`` of the newest committed entry this member holds (``None``: unknown)."""
        found: list[tuple[int, int]] = []
        if self.wal is not None and self.wal.commit and self.wal.commit_term is not None:
            found.append(self.wal.committed)
        if self.applied_index is not None:
            found.append((self.applied_term or 0, self.applied_index))
        return max(found) if found else None

    @property
    def cluster_id(self) -> str | None:
        return f"{self.wal.cluster_id:x}" if self.wal is not None and self.wal.cluster_id else None

    @property
    def member_id(self) -> str | None:
        return f"{self.wal.member_id:x}" if self.wal is not None and self.wal.member_id else None

    def label(self) -> str:
        pos = self.position
        where = f"term {pos[0]}, index {pos[1]}" if pos else "position unknown"
        rev = f"revision {self.revision}" if self.revision is not None else "revision unknown"
        return f"{self.name}: {self.state}, {rev}, {where}"

    def as_json(self) -> dict[str, Any]:
        pos = self.position
        return {"name": self.name, "host": self.host, "data_dir": self.data_dir, "state": self.state,
                "revision": self.revision, "compact_revision": self.compact_revision,
                "applied_index": self.applied_index, "applied_term": self.applied_term,
                "committed_index": pos[1] if pos else None, "committed_term": pos[0] if pos else None,
                "member_id": self.member_id, "cluster_id": self.cluster_id,
                "wal": self.wal.as_json() if self.wal is not None else None,
                "problems": self.problems, "notes": self.notes}


def wal_dir(m: MemberSpec) -> Path:
    """The member's WAL directory: ``--wal-dir`` among its extra arguments, else ``<data_dir>/member/wal``."""
    args = m.extra_args
    for i, a in enumerate(args):
        if a == "--wal-dir" and i + 1 < len(args):
            return Path(args[i + 1])
        if a.startswith("--wal-dir="):
            return Path(a.split("=", 1)[1])
    return m.data_path / "member" / "wal"


def _meta(db: BoltFile) -> dict[bytes, bytes]:
    return dict(iter_bucket(db, b"meta"))


def _u64(value: bytes | None) -> int | None:
    return int.from_bytes(value[:8], "big") if value is not None and len(value) >= 8 else None


def survey_dir(m: MemberSpec, data_dir: Path | None = None, wal: Path | None = None) -> DataDirSurvey:
    """Read one data directory (``data_dir``/``wal`` default to the member's own) and judge it."""
    d = data_dir or m.data_path
    s = DataDirSurvey(m.name, m.host, str(d))
    if not m.is_local and data_dir is None:
        s.state = REMOTE
        s.notes.append(f"on {m.host}: not read from here (run `etcdwarden doctor --spec` on that host to read it)")
        return s
    db_path = d / "member" / "snap" / "db"
    wal_path = wal or (d / "member" / "wal" if data_dir is not None else wal_dir(m))
    if not d.exists():
        s.problems.append(f"{d} does not exist")
        return s
    if not db_path.exists() and not wal_path.exists():
        s.problems.append(f"{d} holds no etcd data (no member/snap/db, no member/wal)")
        return s
    s.state = OK
    try:
        report = verify_db(db_path, skip_hash_check=True)
        s.revision = report.status.revision if report.status is not None else None
        with BoltFile(db_path) as db:
            meta = _meta(db)
        s.applied_index = _u64(meta.get(b"consistent_index"))
        s.applied_term = _u64(meta.get(b"term"))
        s.compact_revision = _u64(meta.get(b"finishedCompactRev")) or 0
        if s.revision is not None:
            s.revision = max(s.revision, s.compact_revision)  # the newest revisions may be compacted deletions
    except (SnapshotCorrupt, SnapshotInputError) as e:
        s.state = DAMAGED
        s.problems.append(f"the backend {db_path} fails the structure check: {e}")
    except OSError as e:
        s.state = DAMAGED
        s.problems.append(f"cannot read {db_path}: {e.strerror or e}")
    try:
        s.wal = read_wal(wal_path)
        if s.wal.tail:
            s.notes.append(s.wal.tail)
        if s.wal.commit and s.wal.commit_term is None:
            s.notes.append(f"the WAL's commit index {s.wal.commit} is not among its entries")
    except FileNotFoundError:
        s.state = DAMAGED
        s.problems.append(f"no WAL in {wal_path}: etcd cannot restart from this directory")
    except SnapshotCorrupt as e:
        s.state = DAMAGED
        s.problems.append(f"the WAL cannot be read: {e}")
    except OSError as e:
        s.state = DAMAGED
        s.problems.append(f"cannot read the WAL {wal_path}: {e.strerror or e}")
    if s.wal is not None and s.applied_index is not None and s.wal.commit and s.applied_index > s.wal.commit:
        s.notes.append(f"the backend applied index {s.applied_index} is past the WAL's commit {s.wal.commit}")
    return s


def survey(spec: ClusterSpec) -> list[DataDirSurvey]:
    return [survey_dir(m) for m in spec.members]


def most_advanced(surveys: list[DataDirSurvey]) -> DataDirSurvey | None:
    """The usable survey with the highest position (the first in spec order among equals)."""
    best: DataDirSurvey | None = None
    for s in surveys:
        if not s.usable or s.position is None:
            continue
        if best is None or s.position > (best.position or (0, 0)):
            best = s
    return best


def ahead_of(chosen: DataDirSurvey, surveys: list[DataDirSurvey]) -> list[DataDirSurvey]:
    """Other members whose data holds more (a higher position) than ``chosen``'s, or could (not readable)."""
    mine = chosen.position or (0, 0)
    out = []
    for s in surveys:
        if s.name == chosen.name:
            continue
        if s.state == REMOTE or (s.position is not None and s.position > mine):
            out.append(s)
    return out


# -- the newest backup, for comparison -------------------------------------------------------------
@dataclass(frozen=True)
class BackupPoint:
    """The newest complete backup of a repository: what a backup restore would bring back."""

    id: str
    revision: int | None
    cluster_id: str | None
    where: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision, "cluster_id": self.cluster_id, "where": self.where}


def newest_backup(location: str, options: Any = None) -> BackupPoint | None:
    """The newest complete backup in ``location`` (a directory or repository URL); ``None`` if there is none."""
    from etcdwarden.repository.base import open_repository
    from etcdwarden.repository.location import normalize
    from etcdwarden.repository.reverify import read_catalog

    repo = open_repository(normalize(location), options)
    try:
        cat = read_catalog(repo)
        e = cat.newest_good()
        if e is None:
            return None
        return BackupPoint(e.id, e.revision, e.cluster_id, repo.where(e.manifest_name) if e.manifest_name
                           else repo.url)
    finally:
        repo.close()


# -- the advice -----------------------------------------------------------------------------------
@dataclass
class QuorumAdvice:
    """What to run after a quorum loss, from the surveys and the newest backup."""

    survivor: DataDirSurvey | None
    backup: BackupPoint | None
    lost_by_backup_restore: int | None  # revisions the survivor holds beyond the backup
    command: str
    summary: str
    notes: list[str] = field(default_factory=list)
    alternatives: list[str] = field(default_factory=list)  # the other way out, with what it costs

    @property
    def quorum_restore(self) -> bool:
        return self.command.startswith("etcdwarden restore quorum")

    def as_json(self) -> dict[str, Any]:
        return {"survivor": self.survivor.name if self.survivor else None,
                "survivor_revision": self.survivor.revision if self.survivor else None,
                "backup": self.backup.as_json() if self.backup else None,
                "revisions_lost_by_backup_restore": self.lost_by_backup_restore,
                "command": self.command, "alternatives": self.alternatives, "summary": self.summary,
                "notes": self.notes}


def advise(surveys: list[DataDirSurvey], backup: BackupPoint | None, spec_path: str,
           repository: str | None) -> QuorumAdvice:
    """``restore quorum`` when a usable survivor is ahead of the newest backup; else ``restore cluster``."""
    best = most_advanced(surveys)
    repo_arg = repository or "BACKUP_DIR"
    restore_backup = f"etcdwarden restore cluster {repo_arg} --spec {spec_path}"
    notes = [f"{s.name}: not read ({s.host})" for s in surveys if s.state == REMOTE]
    if best is None:
        return QuorumAdvice(None, backup, None, restore_backup,
                            "no member's data directory is usable (absent or damaged): restore from the newest "
                            "backup" + (f" ({backup.id}, revision {backup.revision})" if backup else ""), notes)
    quorum = f"etcdwarden restore quorum --spec {spec_path} --survivor {best.name}"
    if backup is not None and best.cluster_id and backup.cluster_id and best.cluster_id != backup.cluster_id:
        notes.append(f"the newest backup {backup.id} comes from cluster {backup.cluster_id}, the survivors from "
                     f"{best.cluster_id}")
    if backup is None or backup.revision is None:
        if backup is not None:
            why = f"the newest backup {backup.id} records no revision"
        elif repository:
            why = f"no complete backup in {repository}"
        else:
            why = "no backup repository given to compare with (--repository)"
        return QuorumAdvice(best, backup, None, quorum,
                            f"{best.name} survives with revision {best.revision} ({why}): recover the cluster from "
                            "it without losing what it holds", notes,
                            [f"{restore_backup}   (loses every revision written after that backup)"])
    lost = (best.revision or 0) - backup.revision
    if lost > 0:
        return QuorumAdvice(best, backup, lost, quorum,
                            f"{best.name} survives with revision {best.revision}, {lost} revisions ahead of the "
                            f"newest backup {backup.id} (revision {backup.revision}): a backup restore would lose "
                            f"{lost} revisions; recover from {best.name} instead", notes,
                            [f"{restore_backup}   (loses {lost} revisions)"])
    return QuorumAdvice(best, backup, 0, restore_backup,
                        f"the newest backup {backup.id} (revision {backup.revision}) holds everything the most "
                        f"advanced survivor {best.name} holds (revision {best.revision}): restore it", notes,
                        [f"{quorum}   (keeps the cluster's membership; loses nothing either)"])

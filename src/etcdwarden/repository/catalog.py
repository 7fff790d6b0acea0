"""The catalog of a repository: its objects grouped into backups by timestamp ID, read from the manifests.

This is the one reader of a repository's backups: ``backups``, ``snapshot verify|status|inspect``,
``restore`` and the daemon all list backups through :func:`load_catalog`, and every manifest is read
by :func:`etcdwarden.format.manifest.load` (typed, migrated from version 1, validated).

A backup's ID is its timestamp (``2026-11-22_033053``). Its objects are the artifacts of
:mod:`etcdwarden.format.names` carrying that timestamp (snapshot, resources bundle, manifest, and the
reserved segment and drill-record names), plus temporary names a writer may leave behind after a
crash (``<name>.part``, ``.<name>.tmp-<pid>``, ``.<snapshot>.verify.part``). Every other object is
*unknown*: listed as such, never deleted.

States:

``complete``
    the manifest parses, says ``verified: true``, and every file it lists is present with the
    recorded size. Only these count for retention (and may be restored).
``unverified``
    the manifest says the backup was not verified (``verified`` is not ``true``).
``incomplete``
    no manifest (a failed, crashed, in-progress or half-deleted backup: the manifest is the last
    object written and the first deleted), or a listed file is missing or has another size.
``unreadable``
    the manifest exists but cannot be used: not valid JSON, not a manifest, inconsistent, or written
    by a newer etcdwarden (a format this one does not know). Never deleted automatically.
``corrupt``
    set only by re-hashing (:mod:`.reverify`): a file's sha256 or size is not what the manifest
    records. Never counted, never deleted automatically.

Drills: a backup's last restore-drill record (``drill_<ts>.json``, :mod:`etcdwarden.format.drill`) is read
with its manifest. It never changes the state (a backup whose drill failed is still ``complete``, kept and
counted by retention, never deleted for it); it sets :attr:`CatalogEntry.proven` (the last drill passed) or
:attr:`CatalogEntry.unproven` (it failed, or its record is unreadable), which ``backups list`` shows and
retention prefers when it must choose.

Listing reads the manifests and the objects' sizes only; a backup's files are hashed again only by
:mod:`.reverify` (``backups list --verify``, and retention before it deletes anything), so a plain
listing says ``complete``, never that the bytes were re-proven. Objects of etcdwarden's own
bookkeeping (the lock, the hash cache: names starting with ``.etcdwarden``) are neither backups nor
*unknown*.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.format import drill as drill_format
from etcdwarden.format.drill import DrillRecord, DrillRecordError
from etcdwarden.format.manifest import Manifest, ManifestError, load
from etcdwarden.format.names import Kind, internal, parse, parse_id
from etcdwarden.repository.base import ObjectInfo, Repository, RepositoryError

GOOD = "complete"
CORRUPT = "corrupt"
UNVERIFIED = "unverified"
INCOMPLETE = "incomplete"
UNREADABLE = "unreadable"

__all__ = ["CORRUPT", "GOOD", "BackupUnusable", "Catalog", "CatalogEntry", "NoBackup", "classify",
           "delete_backup", "internal", "load_catalog", "parse_id"]


class NoBackup(UsageError):
    """The repository holds no backup that can be used (none at all, or none complete)."""


class BackupUnusable(EtcdwardenError):
    """The backup asked for cannot be used: its manifest is unreadable, or a re-hash found it corrupt."""


def classify(name: str) -> tuple[str, str] | None:
    """``(kind, id)``: kind ``manifest``, ``data`` (snapshot, bundle), ``temp``, or the reserved ``segment``,
    ``segment-manifest``, ``drill``; ``None`` for an unknown object."""
    n = parse(name)
    if n is None:
        return None
    if n.temp:
        return "temp", n.id
    if n.kind is Kind.MANIFEST:
        return "manifest", n.id
    return ("data" if n.is_data else str(n.kind)), n.id


@dataclass
class CatalogEntry:
    """One backup (complete or not) of a repository."""

    id: str
    time: dt.datetime
    state: str
    problem: str | None = None
    objects: list[ObjectInfo] = field(default_factory=list)
    manifest: Manifest | None = None  # set when the manifest reads and validates
    manifest_name: str | None = None
    absent: list[str] = field(default_factory=list)  # files the manifest lists that are not there
    drill: DrillRecord | None = None  # the last restore drill's record, when it reads
    drill_problem: str | None = None  # why the drill record present cannot be read

    @property
    def good(self) -> bool:
        return self.state == GOOD

    @property
    def size(self) -> int:
        """Bytes of every object of this backup in the repository (manifest included)."""
        return sum(o.size for o in self.objects)

    @property
    def last_modified(self) -> dt.datetime:
        return max([self.time, *(o.mtime for o in self.objects)])

    @property
    def revision(self) -> int | None:
        return self.manifest.revision if self.manifest is not None else None

    @property
    def member(self) -> str | None:
        m = self.manifest
        return m.member.name if m is not None and m.member is not None else None

    @property
    def cluster_id(self) -> str | None:
        return self.manifest.cluster_id if self.manifest is not None else None

    @property
    def verified(self) -> bool:
        """The manifest says verified *and* the backup is complete (never for incomplete or corrupt ones)."""
        return self.good and self.manifest is not None and self.manifest.verified

    @property
    def key_names(self) -> list[str]:
        return self.manifest.key_names if self.manifest is not None else []

    @property
    def proven(self) -> bool:
        """The last restore drill of this backup passed."""
        return self.drill is not None and self.drill.passed

    @property
    def unproven(self) -> bool:
        """The last restore drill failed, or its record cannot be read (never drilled: neither)."""
        return self.drill_problem is not None or (self.drill is not None and not self.drill.passed)

    def drill_json(self) -> dict[str, Any] | None:
        """The last drill in brief (``None``: never drilled)."""
        d = self.drill
        if d is None:
            return None if self.drill_problem is None else {"result": "unreadable", "problems": [self.drill_problem]}
        return {"result": d.result, "at": d.finished_at.isoformat(), "revision": d.revision,
                "etcd_version": d.etcd_version, "problems": d.problems[:5]}

    def data_files(self) -> list[str]:
        """Names the manifest lists (data first, in a stable order)."""
        return self.manifest.data_files() if self.manifest is not None else []

    def as_json(self, repo: Repository) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": self.id, "time": self.time.isoformat(), "state": self.state, "problem": self.problem,
            "verified": self.verified, "manifest_verified": m is not None and m.verified,
            "revision": self.revision, "member": self.member,
            "cluster_id": self.cluster_id, "db_size": m.db_size if m is not None else None, "size": self.size,
            "encryption_keys": self.key_names, "compression": m.snapshot.compression if m is not None else None,
            "encryption": m.snapshot.encryption if m is not None else None,
            "format": m.source_format if m is not None else None,
            "proven": True if self.proven else False if self.unproven else None, "drill": self.drill_json(),
            "where": repo.where(self.manifest_name) if self.manifest_name else repo.url,
            "objects": [o.name for o in self.objects],
        }


@dataclass
class Catalog:
    url: str
    entries: list[CatalogEntry]  # oldest first
    unknown: list[str]

    @property
    def good(self) -> list[CatalogEntry]:
        return [e for e in self.entries if e.good]

    def newest_good(self) -> CatalogEntry | None:
        good = self.good
        return good[-1] if good else None

    def get(self, backup_id: str) -> CatalogEntry:
        parse_id(backup_id)
        for e in self.entries:
            if e.id == backup_id:
                return e
        raise UsageError(f"{self.url}: no backup {backup_id} (see `etcdwarden backups list`)")

    def select(self, backup_id: str | None = None) -> tuple[CatalogEntry, list[str]]:
        """The backup to read: ``backup_id``'s, or the newest one; with notes on what was passed over.

        Without an ID: the newest backup with a manifest (newer failed or interrupted runs, which have none,
        are named in the notes). It is returned when it is complete, unverified, or complete but for a missing
        resources bundle (the reader's own checks then prove it, or refuse with a ``--force`` to override). A
        newest backup that is damaged otherwise (unreadable, corrupt, its snapshot missing or of another size)
        is never passed over silently for an older one: :class:`BackupUnusable` names it and the newest
        complete backup to ask for by ID instead.

        With an ID: that backup, unless its manifest is unusable or a re-hash found it corrupt.
        Raises :class:`NoBackup` (exit 2) or :class:`BackupUnusable` (exit 1).
        """
        if backup_id is not None:
            e = self.get(backup_id)
            if e.state in (UNREADABLE, CORRUPT) or e.manifest is None:
                raise BackupUnusable(f"backup {e.id} in {self.url} is {e.state}: {e.problem}")
            return e, ([] if e.good else [f"backup {e.id} is {e.state}: {e.problem}"])
        with_manifest = [e for e in self.entries if e.manifest_name is not None]
        if not with_manifest:
            raise NoBackup(f"{self.url}: no backup here (no backup_<YYYY-MM-DD_HHMMSS>.json)")
        newest = with_manifest[-1]
        notes = [f"skipped {e.id}: {e.state} ({e.problem})" for e in self.entries if e.id > newest.id]
        if newest.good:
            return newest, notes
        if newest.manifest is not None and (newest.state == UNVERIFIED or (
                newest.state == INCOMPLETE and newest.absent == [newest.manifest.resources_file])):
            return newest, [*notes, f"backup {newest.id} is {newest.state}: {newest.problem}"]
        good = self.newest_good()
        other = f"pass --id {good.id} for the newest complete backup" if good is not None else \
            "there is no complete backup"
        raise BackupUnusable(f"{self.url}: the newest backup, {newest.id}, is {newest.state}: {newest.problem}; "
                             f"{other}")


def _judge(entry: CatalogEntry, raw: bytes) -> None:
    try:
        m = load(raw, entry.id)
    except ManifestError as e:
        entry.state, entry.problem = UNREADABLE, e.problem
        return
    entry.manifest = m
    present = {o.name: o.size for o in entry.objects}
    entry.absent = sorted(name for name in m.files if name not in present)
    for name, f in m.files.items():
        if name not in present:
            entry.state, entry.problem = INCOMPLETE, f"{name} is listed in the manifest but missing"
            return
        if present[name] != f.size:
            entry.state, entry.problem = INCOMPLETE, \
                f"{name} is {present[name]} bytes but the manifest records {f.size}"
            return
    if not m.verified:
        entry.state, entry.problem = UNVERIFIED, "the manifest says the backup was not verified"
        return
    entry.state, entry.problem = GOOD, None


def load_catalog(repo: Repository) -> Catalog:
    """List the repository and read every manifest (small JSON objects)."""
    groups: dict[str, list[ObjectInfo]] = {}
    unknown: list[str] = []
    for obj in repo.list():
        if internal(obj.name):
            continue
        c = classify(obj.name)
        if c is None:
            unknown.append(obj.name)
            continue
        try:
            parse_id(c[1])
        except UsageError:  # e.g. month 13: not one of ours after all
            unknown.append(obj.name)
            continue
        groups.setdefault(c[1], []).append(obj)
    entries: list[CatalogEntry] = []
    for ts in sorted(groups):
        objs = sorted(groups[ts], key=lambda o: o.name)
        e = CatalogEntry(ts, parse_id(ts), INCOMPLETE, "no manifest (failed, interrupted or in progress)", objs)
        manifest = next((o.name for o in objs if classify(o.name) == ("manifest", ts)), None)
        if manifest is not None:
            e.manifest_name = manifest
            try:
                raw = repo.read_bytes(manifest)
            except RepositoryError as err:
                e.state, e.problem = UNREADABLE, str(err)
            else:
                _judge(e, raw)
            _read_drill(repo, e, objs)
        entries.append(e)
    return Catalog(repo.url, entries, sorted(unknown))


def _read_drill(repo: Repository, entry: CatalogEntry, objs: list[ObjectInfo]) -> None:
    name = next((o.name for o in objs if classify(o.name) == ("drill", entry.id)), None)
    if name is None:
        return
    try:
        entry.drill = drill_format.load(repo.read_bytes(name), entry.id)
    except (DrillRecordError, RepositoryError) as err:
        entry.drill_problem = f"{name}: {err}"


def delete_backup(repo: Repository, entry: CatalogEntry) -> list[str]:
    """Delete one backup: its manifest first (so it stops being a backup at once), then its other
    objects. Only objects of this backup's ID are touched. Returns the names deleted."""
    names = [o.name for o in entry.objects]
    order = sorted(names, key=lambda n: (0 if classify(n) == ("manifest", entry.id) else 1, n))
    done: list[str] = []
    for name in order:
        repo.delete(name)
        done.append(name)
        if classify(name) == ("manifest", entry.id):
            repo.sync()
    repo.sync()
    return done

"""Where a backup comes from: a file, a backup directory or any repository URL, read through the one catalog.

``BACKUP`` (of ``restore member|cluster`` and ``snapshot verify|status|inspect``) may be:

* a repository: a directory, ``file://``, ``s3://``, ``gs://`` or ``az://`` URL. The backup of
  ``--id TS``, or the newest one (:meth:`etcdwarden.repository.catalog.Catalog.select`: newer failed
  runs are skipped with a note; a damaged newest backup is refused, naming the newest complete one);
* a manifest ``backup_<ts>.json`` (a path, or an object URL): that backup;
* a snapshot file. Named ``snapshot_<ts>...`` beside its ``backup_<ts>.json``, it is that backup
  (manifest checks included); any other snapshot file is read on its own sha256 trailer and structure.

Every repository is listed by :func:`etcdwarden.repository.reverify.read_catalog` and every manifest read
by :func:`etcdwarden.format.manifest.load`: version-1 manifests still read; a newer format is refused.

The files of a backup in a local directory are used in place. Those of an object store are streamed
into a private staging directory (mode 0700, :func:`etcdwarden.snapshot.scratch.scratch_dir`) made in
``stage_near`` (for a restore: beside the data directory), their size and sha256 checked against the
manifest on the way down (:mod:`etcdwarden.repository.fetch`). The directory is removed when the
:class:`Backup` is closed, whatever happens; one a killed run left is removed by the next run there.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from etcdwarden.errors import UsageError
from etcdwarden.format.manifest import Manifest
from etcdwarden.format.names import TS_RE, Kind, parse
from etcdwarden.repository.base import Repository, RepositoryOptions, open_repository
from etcdwarden.repository.catalog import Catalog, CatalogEntry
from etcdwarden.repository.fetch import fetch_files
from etcdwarden.repository.location import normalize, scheme_of
from etcdwarden.repository.reverify import read_catalog
from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError
from etcdwarden.snapshot.scratch import existing_dir, scratch_dir
from etcdwarden.snapshot.verify import BackupReport, SnapshotReport, verify_backup, verify_path


@dataclass
class Backup:
    """One backup, its files local (in place, or staged); ``manifest`` is ``None`` for a bare snapshot file."""

    snapshot: Path
    manifest: Manifest | None = None
    where: str | None = None  # the manifest's location (path or URL), for messages
    directory: Path | None = None  # where the manifest's files are, locally
    resources: Path | None = None
    identity: Path | None = None
    notes: list[str] = field(default_factory=list)
    url: str | None = None  # the snapshot's URL when it was fetched from an object store
    proven: frozenset[str] = frozenset()  # files whose size and sha256 were checked on the way down
    point: str | None = None  # a point-in-time restore: what identifies the point (base and revision)
    replayed: dict[str, Any] | None = None  # a point-in-time restore: the base, revision, time, segments replayed
    _stack: contextlib.ExitStack | None = field(default=None, repr=False)

    @property
    def timestamp(self) -> str | None:
        return self.manifest.timestamp if self.manifest is not None else None

    @property
    def server_version(self) -> str | None:
        return self.manifest.server_version if self.manifest is not None else None

    @property
    def release(self) -> str | None:
        return (self.manifest.release or None) if self.manifest is not None else None

    @property
    def cluster_id(self) -> str | None:
        return (self.manifest.cluster_id or None) if self.manifest is not None else None

    @property
    def revision(self) -> int | None:
        return self.manifest.snapshot_revision if self.manifest is not None else None

    @property
    def total_key(self) -> int | None:
        return self.manifest.total_key if self.manifest is not None else None

    @property
    def label(self) -> str:
        return self.where or str(self.snapshot)

    @property
    def source(self) -> str:
        """What identifies the snapshot across runs (a resumed restore must use the same): its URL or real path."""
        return self.point or self.url or str(self.snapshot.resolve())

    def describe(self) -> dict[str, Any]:
        return {"snapshot": self.url or str(self.snapshot), "manifest": self.where,
                "resources": str(self.resources) if self.resources else None, "timestamp": self.timestamp,
                "etcd_version": self.server_version, "release": self.release, "cluster_id": self.cluster_id,
                "revision": self.revision, **({"point_in_time": self.replayed} if self.replayed else {})}

    def close(self) -> None:
        """Remove the staging directory of a fetched backup (nothing to do for local files)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def is_remote(location: str | Path) -> bool:
    """An object-store URL (``s3://``, ``gs://``, ``az://``), as opposed to a path or ``file://`` URL."""
    return scheme_of(location) != "file"


def local_path(location: str | Path) -> Path:
    """A path, or the path of a ``file://`` URL."""
    text = str(location)
    if text.lower().startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"{text}: a file:// URL names a local path (file:///path), not host {parts.netloc!r}")
        return Path(unquote(parts.path))
    return Path(text)


def check_id(backup_id: str | None) -> None:
    if backup_id is not None and not TS_RE.match(backup_id):
        raise SnapshotInputError(f"--id {backup_id!r}: expected a backup timestamp YYYY-MM-DD_HHMMSS")


def split_object_url(url: str) -> tuple[str, str | None]:
    """``s3://b/p/backup_<ts>.json`` (or ``.../snapshot_<ts>.db``) -> (``s3://b/p``, ``<ts>``); else (url, None)."""
    parts = urlsplit(url)
    last = parts.path.rsplit("/", 1)[-1]
    n = parse(last)
    if n is None or n.temp or n.kind not in (Kind.MANIFEST, Kind.SNAPSHOT):
        return url, None
    base = parts._replace(path=parts.path[: -len(last)].rstrip("/")).geturl()
    return base, n.id


def find_backup(location: str | Path, backup_id: str | None = None, identity: Path | None = None, *,
                options: RepositoryOptions | None = None, stage_near: Path | None = None,
                resources: bool = True) -> Backup:
    """Resolve ``BACKUP`` (see the module docstring) to one :class:`Backup`; close it when done.

    ``stage_near``: where the private staging directory of an object store's files is made (default: the
    current directory); ``resources``: fetch the resources bundle too (a restore checks it).
    """
    check_id(backup_id)
    if is_remote(location):
        base, named = split_object_url(normalize(location))
        if named is not None and backup_id is not None and named != backup_id:
            raise UsageError(f"{location} is backup {named}, but --id says {backup_id}")
        repo = open_repository(base, options)
        try:
            cat = read_catalog(repo)
            entry, notes = cat.select(named or backup_id)
            return open_entry(repo, entry, notes, identity, stage_near or Path.cwd(), resources)
        finally:
            repo.close()
    path = local_path(location)
    if not path.exists():
        raise SnapshotInputError(f"{path}: no such file or directory")
    if path.is_dir():
        return _from_directory(path, backup_id, identity)
    n = parse(path.name)
    if n is not None and not n.temp and n.kind is Kind.MANIFEST:
        if backup_id is not None and backup_id != n.id:
            raise UsageError(f"{path} is backup {n.id}, but --id says {backup_id}")
        return _from_directory(path.parent, n.id, identity)
    if n is not None and not n.temp and n.kind is Kind.SNAPSHOT and (path.parent / f"backup_{n.id}.json").is_file():
        b = _from_directory(path.parent, n.id, identity)
        if b.snapshot.resolve() != path.resolve():
            raise SnapshotCorrupt(f"{b.where} lists {b.snapshot.name}, not {path.name}")
        return b
    if backup_id is not None:
        raise SnapshotInputError("--id selects a backup in a backup directory or repository; BACKUP is a file")
    return Backup(snapshot=path, identity=identity,
                  notes=[f"{path.name} has no manifest: only its sha256 trailer and structure can be checked, "
                         "and its etcd version is unknown"])


def _from_directory(directory: Path, backup_id: str | None, identity: Path | None) -> Backup:
    with open_repository(directory.absolute()) as repo:
        cat = _catalog(repo, directory)
        entry, notes = cat.select(backup_id)
        return open_entry(repo, entry, notes, identity, None, True)


def _catalog(repo: Repository, directory: Path) -> Catalog:
    cat = read_catalog(repo)
    if not any(e.manifest_name for e in cat.entries):
        raise SnapshotInputError(f"{directory}: no backup manifest (backup_<YYYY-MM-DD_HHMMSS>.json) in this "
                                 "directory; give a snapshot file to restore it without a manifest")
    return cat


def open_entry(repo: Repository, entry: CatalogEntry, notes: list[str], identity: Path | None,
               stage_near: Path | None, resources: bool = True) -> Backup:
    """The :class:`Backup` of a catalog entry: its files in place (a local directory) or fetched into a private
    staging directory made in ``stage_near`` (an object store; the bundle only with ``resources``)."""
    m = entry.manifest
    assert m is not None and entry.manifest_name is not None
    where = repo.where(entry.manifest_name)
    present = {o.name for o in entry.objects}
    if m.snapshot_file not in present:
        raise SnapshotCorrupt(f"{where}: {m.snapshot_file} is listed but missing")
    here = repo.local_path(entry.manifest_name)
    if here is not None:
        b = Backup(snapshot=here.parent / m.snapshot_file, manifest=m, where=str(here), directory=here.parent,
                   identity=identity, notes=list(notes))
        b.resources = _local_resources(b, m, here.parent)
        return b
    stack = contextlib.ExitStack()
    try:
        staging = stack.enter_context(scratch_dir(existing_dir(stage_near or Path.cwd()), notes))
        wanted = [m.snapshot_file]
        bundle = m.resources_file
        if resources and bundle is not None and bundle in m.files and bundle in present:
            wanted.append(bundle)
        fetch_files(repo, m.files, wanted, staging)
        b = Backup(snapshot=staging / m.snapshot_file, manifest=m, where=where, directory=staging,
                   identity=identity, notes=list(notes), url=repo.where(m.snapshot_file),
                   proven=frozenset(wanted), _stack=stack)
        b.resources = staging / bundle if bundle is not None and bundle in wanted else None
        if bundle is not None and bundle not in m.files:
            b.resources = _local_resources(b, m, None)
        elif resources and bundle is not None and bundle not in wanted:
            b.notes.append(f"resources bundle {bundle} not found in {repo.url}")
        return b
    except BaseException:
        stack.close()
        raise


def _local_resources(b: Backup, m: Manifest, directory: Path | None) -> Path | None:
    """The resources bundle as a local file: beside the manifest, or in the directory it was written to."""
    res = m.resources
    if res is None:
        return None
    name = res.file
    candidates = [directory / name] if directory is not None and name in m.files else []
    if res.directory and name not in m.files:  # stored in a separate directory (--resources-dir)
        candidates.append(Path(res.directory) / name)
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c.parent) for c in candidates) or "nowhere"
    b.notes.append(f"resources bundle {name} not found (looked in {looked})")
    return None


def stage_dir(path: str | os.PathLike[str] | None) -> Path:
    """Where a snapshot command stages and decodes a backup it fetches: ``--temp-dir`` or the current directory
    (never the system temp dir: decoded copies are plaintext etcd data)."""
    return existing_dir(Path(path)) if path is not None else Path.cwd()


def verify_location(location: str | Path, backup_id: str | None = None, identity: Path | None = None,
                    skip_hash_check: bool = False, *, options: RepositoryOptions | None = None,
                    temp_dir: Path | None = None) -> SnapshotReport | BackupReport:
    """``snapshot verify``: a snapshot file; a manifest (that backup); a directory or repository: every backup
    in it, or the one of ``backup_id``. A backup fetched from an object store is staged in ``temp_dir`` (default:
    the current directory), one at a time."""
    check_id(backup_id)
    near = stage_dir(temp_dir)
    if is_remote(location):
        base, named = split_object_url(normalize(location))
        if named is not None:
            with find_backup(location, backup_id, identity, options=options, stage_near=near) as b:
                return _report(str(location), [_verify_one(b, skip_hash_check)])
        label: str = base
        where: str | Path = base
    else:
        path = local_path(location)
        if not path.exists():
            raise SnapshotInputError(f"{path}: no such file or directory")
        if path.is_file():
            n = parse(path.name)
            if n is not None and not n.temp and n.kind is Kind.MANIFEST:
                with find_backup(path, backup_id, identity) as b:
                    return _report(str(path), [_verify_one(b, skip_hash_check)])
            if backup_id is not None:
                raise SnapshotInputError("--id selects a backup in a backup directory or repository; the input is "
                                         "a file")
            return verify_path(path, identity, skip_hash_check)
        label, where = str(path), path.absolute()
    with open_repository(where, options) as repo:
        cat = read_catalog(repo)
        entries = [cat.get(backup_id)] if backup_id is not None else cat.entries
        if not any(e.manifest_name for e in entries):
            raise SnapshotCorrupt(f"{label}: no backup manifest (backup_<YYYY-MM-DD_HHMMSS>.json): not a backup")
        done = []
        for e in entries:
            if e.manifest_name is None:
                snaps = [o.name for o in e.objects if _is_snapshot(o.name)]
                if snaps:
                    raise SnapshotCorrupt(f"{repo.where(snaps[0])}: snapshot without a manifest (an incomplete backup)")
                continue
            if e.manifest is None:
                raise SnapshotCorrupt(f"{repo.where(e.manifest_name)}: {e.problem}")
            with open_entry(repo, e, [], identity, near) as b:
                done.append(_verify_one(b, skip_hash_check))
        return _report(label, done)


def _is_snapshot(name: str) -> bool:
    n = parse(name)
    return n is not None and not n.temp and n.kind is Kind.SNAPSHOT


def _verify_one(b: Backup, skip_hash_check: bool) -> tuple[dict[str, Any], SnapshotReport | None, list[str]]:
    assert b.manifest is not None and b.directory is not None
    work = b.directory if b.url is not None else None  # fetched: decode inside the private staging directory
    summary, report, notes = verify_backup(b.manifest, b.directory, b.label, b.identity, skip_hash_check, work,
                                           proven=b.proven)
    return summary, report, [*b.notes, *notes]


def _report(label: str, results: list[tuple[dict[str, Any], SnapshotReport | None, list[str]]]) -> BackupReport:
    out = BackupReport(label)
    for summary, report, notes in results:
        out.backups.append(summary)
        if report is not None:
            out.snapshots.append(report)
        out.notes.extend(notes)
    return out

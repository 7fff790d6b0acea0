"""Copy verified backups between repositories (local -> S3, S3 -> local, ...), manifest last, with what is filed
under them: the segments of continuous backup and the drill record.

Each file is streamed from the source into a :class:`~etcdwarden.repository.base.Writer` of the
destination while its sha256 and size are checked against the manifest; a mismatch abandons that
write (nothing visible). The manifest, copied byte for byte, is written only after every file of the
backup is in place, so the destination never shows a backup that is not whole. On failure the files
this copy already committed are removed again (best effort; what remains is an *incomplete* backup
that retention cleans up after its grace period). When the failure (or a signal) comes while the manifest
itself is being written, the manifest may already stand: it is removed first, and if that fails the data
files are left in place, so the destination never holds a manifest whose files were deleted.

A backup's segments (``receive``: the changes after it, what a point-in-time restore replays) follow it,
in revision order, each data file checked against its segment manifest on the way and its manifest written
after it; those the destination already holds are skipped, so copying again extends the copy's window.
A segment that cannot be copied as recorded (unreadable manifest, data that does not match it) ends that
backup's chain in the copy, as it ends it in the source, and a note says so. The drill record (the proof
that the backup restores) is copied when the destination has none for that backup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import UsageError
from etcdwarden.format.drill import DrillRecordError
from etcdwarden.format.drill import load as load_drill
from etcdwarden.format.names import BackupNames
from etcdwarden.format.segment import SegmentError, load_segment_manifest
from etcdwarden.repository.base import CHUNK, Repository, RepositoryError
from etcdwarden.repository.catalog import CatalogEntry, classify, load_catalog

Progress = Callable[[str, int], None]  # (object name, bytes copied so far)


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    segments: list[str] = field(default_factory=list)  # segment manifests copied (their data files with them)
    drills: list[str] = field(default_factory=list)  # drill records copied
    notes: list[str] = field(default_factory=list)  # what was not copied and why (a chain that ends early)

    def as_json(self) -> dict[str, Any]:
        return {"copied": self.copied, "skipped": [{"id": k, "reason": v} for k, v in self.skipped.items()],
                "bytes": self.bytes, "segments": self.segments, "drills": self.drills, "notes": self.notes}


#: objects from this size on are written as bulk (see Repository.open_write)
BULK = 1 << 20


class NotAsRecorded(RepositoryError):
    """The source's bytes are not what its manifest records (nothing was committed)."""


def _copy_file(src: Repository, dst: Repository, name: str, size: int, sha256: str, progress: Progress | None,
               chunk_size: int) -> int:
    """Stream ``name`` into ``dst``, committed only if it has the recorded size and sha256 (a large object past
    a local destination's page cache: nothing reads it back)."""
    with dst.open_write(name, bulk=size >= BULK) as w:
        for chunk in src.open_read(name, chunk_size):
            w.write(chunk)
            if progress is not None:
                progress(name, w.size)
        if w.size != size or w.sha.hexdigest() != sha256:
            raise NotAsRecorded(
                f"{src.where(name)}: read {w.size} bytes with sha256 {w.sha.hexdigest()}, but the manifest "
                f"records {size} bytes with sha256 {sha256}; not copied")
        w.commit()
    return size


def copy_backup(src: Repository, dst: Repository, entry: CatalogEntry, progress: Progress | None = None,
                chunk_size: int = CHUNK) -> int:
    """Copy one complete backup; returns the bytes copied."""
    if not entry.good or entry.manifest is None or entry.manifest_name is None:
        raise UsageError(f"backup {entry.id} is {entry.state} ({entry.problem}); only complete backups are copied")
    files = entry.manifest.files
    raw_manifest = src.read_bytes(entry.manifest_name)
    committed: list[str] = []
    total = 0
    manifest_started = False
    try:
        for name in entry.data_files():
            want = files[name]
            total += _copy_file(src, dst, name, want.size, want.sha256, progress, chunk_size)
            committed.append(name)
        manifest_started = True
        dst.write_bytes(entry.manifest_name, raw_manifest)
        total += len(raw_manifest)
    except BaseException:
        if manifest_started and not _removed(dst, entry.manifest_name):
            raise  # the manifest may stand and name the files: they stay
        for name in committed:
            with contextlib.suppress(Exception):
                dst.delete(name)
        with contextlib.suppress(Exception):
            dst.sync()
        raise
    dst.sync()
    return total


def copy_filed(src: Repository, dst: Repository, entry: CatalogEntry, present: set[str], report: CopyReport,
               dry_run: bool = False, progress: Progress | None = None, chunk_size: int = CHUNK) -> None:
    """Copy the segments and the drill record filed under ``entry`` that ``dst`` lacks (``present``: the
    names ``dst`` holds), into ``report``."""
    sizes = {o.name: o.size for o in entry.objects}
    wrote = False
    for name in sorted(n for n in sizes if classify(n) == ("segment-manifest", entry.id)):  # revision order
        try:
            raw = src.read_bytes(name)
            m = load_segment_manifest(raw, name)
        except (SegmentError, RepositoryError) as e:
            report.notes.append(f"backup {entry.id}: {e}; its chain of segments is copied up to the one before")
            break
        if name in present and m.file in present:
            continue
        if m.file not in sizes:
            report.notes.append(f"backup {entry.id}: {m.file} is missing in {src.url}; its chain of segments is "
                                "copied up to the one before")
            break
        if dry_run:
            report.segments.append(name)
            report.bytes += m.size + len(raw)
            continue
        try:
            report.bytes += _copy_file(src, dst, m.file, m.size, m.sha256, progress, chunk_size)
        except NotAsRecorded as e:  # (a failing destination fails the copy, as for a backup's files)
            report.notes.append(f"backup {entry.id}: {e}; its chain of segments is copied up to the one before")
            break
        try:
            dst.write_bytes(name, raw)
        except BaseException:
            with contextlib.suppress(Exception):
                dst.delete(m.file)
            raise
        report.segments.append(name)
        report.bytes += len(raw)
        wrote = True
    drill = BackupNames(entry.id).drill
    if drill in sizes and drill not in present:
        try:
            raw = src.read_bytes(drill)
            load_drill(raw, entry.id)
        except (DrillRecordError, RepositoryError) as e:
            report.notes.append(f"backup {entry.id}: its drill record is not copied ({e})")
        else:
            if not dry_run:
                dst.write_bytes(drill, raw)
                wrote = True
            report.drills.append(drill)
            report.bytes += len(raw)
    if wrote:  # (also after a drill record that could not be copied: the segments before it were)
        dst.sync()


def _removed(repo: Repository, name: str) -> bool:
    try:
        repo.delete(name)
        repo.sync()
    except Exception:
        return False
    return True


def copy_backups(src: Repository, dst: Repository, ids: Sequence[str] = (), dry_run: bool = False,
                 progress: Progress | None = None) -> CopyReport:
    """Copy the complete backups of ``src`` (all, or ``ids``) that ``dst`` does not hold complete."""
    from etcdwarden.repository.prune import repository_lock

    # an existing local destination is written under its directory lock, like every writer of a repository
    # (so the next holder knows whether the temporary files of a killed copy are stale)
    with repository_lock(dst):
        return _copy_backups(src, dst, ids, dry_run, progress)


def _copy_backups(src: Repository, dst: Repository, ids: Sequence[str], dry_run: bool,
                  progress: Progress | None) -> CopyReport:
    source = load_catalog(src)
    target = load_catalog(dst)
    if ids:
        wanted = [source.get(i) for i in ids]
        for e in wanted:
            if not e.good:
                raise UsageError(f"backup {e.id} in {src.url} is {e.state} ({e.problem}); it cannot be copied")
    else:
        wanted = source.good
    have = {e.id: e for e in target.entries}
    present = {o.name for e in target.entries for o in e.objects}
    report = CopyReport()
    for e in wanted:
        existing = have.get(e.id)
        if existing is not None and existing.good:
            same = existing.manifest is not None and e.manifest is not None \
                and existing.manifest.files == e.manifest.files
            report.skipped[e.id] = "already in the destination" if same else \
                "the destination holds a different backup with this ID; not overwritten"
            if same:  # what was filed under it since the last copy (new segments) follows it
                copy_filed(src, dst, e, present, report, dry_run, progress)
            continue
        if dry_run:
            report.copied.append(e.id)
            report.bytes += sum(o.size for o in e.objects if classify(o.name) in (("data", e.id), ("manifest", e.id)))
        else:
            report.bytes += copy_backup(src, dst, e, progress)
            report.copied.append(e.id)
        copy_filed(src, dst, e, present, report, dry_run, progress)
    return report

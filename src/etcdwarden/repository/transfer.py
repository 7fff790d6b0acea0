"""Copy verified backups between repositories (local -> S3, S3 -> local, ...), manifest last.

Each file is streamed from the source into a :class:`~etcdwarden.repository.base.Writer` of the
destination while its sha256 and size are checked against the manifest; a mismatch abandons that
write (nothing visible). The manifest, copied byte for byte, is written only after every file of the
backup is in place, so the destination never shows a backup that is not whole. On failure the files
this copy already committed are removed again (best effort; what remains is an *incomplete* backup
that retention cleans up after its grace period). When the failure (or a signal) comes while the manifest
itself is being written, the manifest may already stand: it is removed first, and if that fails the data
files are left in place, so the destination never holds a manifest whose files were deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import UsageError
from etcdwarden.repository.base import CHUNK, Repository, RepositoryError
from etcdwarden.repository.catalog import CatalogEntry, load_catalog

Progress = Callable[[str, int], None]  # (object name, bytes copied so far)


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"copied": self.copied, "skipped": [{"id": k, "reason": v} for k, v in self.skipped.items()],
                "bytes": self.bytes}


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
            with dst.open_write(name) as w:
                for chunk in src.open_read(name, chunk_size):
                    w.write(chunk)
                    if progress is not None:
                        progress(name, w.size)
                if w.size != want.size or w.sha.hexdigest() != want.sha256:
                    raise RepositoryError(
                        f"{src.where(name)}: read {w.size} bytes with sha256 {w.sha.hexdigest()}, but the manifest "
                        f"records {want.size} bytes with sha256 {want.sha256}; not copied")
                w.commit()
            committed.append(name)
            total += w.size
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
    report = CopyReport()
    for e in wanted:
        existing = have.get(e.id)
        if existing is not None and existing.good:
            same = existing.manifest is not None and e.manifest is not None \
                and existing.manifest.files == e.manifest.files
            report.skipped[e.id] = "already in the destination" if same else \
                "the destination holds a different backup with this ID; not overwritten"
            continue
        if dry_run:
            report.copied.append(e.id)
            report.bytes += e.size
            continue
        report.bytes += copy_backup(src, dst, e, progress)
        report.copied.append(e.id)
    return report

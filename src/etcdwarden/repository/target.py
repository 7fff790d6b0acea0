"""The glue ``etcdwarden backup`` uses to write into a repository URL instead of a directory.

``BackupTarget(location)`` opens the repository. For a local repository it behaves exactly as the
backup code does today: :meth:`BackupTarget.sink` returns a plain
:class:`~etcdwarden.backup.stream.FileSink` in the directory and :meth:`BackupTarget.write_manifest`
is :func:`~etcdwarden.fsutil.atomic_write`. For an object store, :attr:`BackupTarget.staging` is a
private temporary directory (for the lock and verification copies) and :meth:`sink` returns a
:class:`RepositorySink`, a drop-in for ``FileSink`` (``write/finish/discard/commit``, ``path``,
``part``, ``sha``, ``size``) that streams into a multipart upload while keeping a local copy at
``part`` for verification. The object appears only on ``commit()`` (after verification), and the
manifest — :meth:`write_manifest` — is the last object written.

:meth:`publish` is the non-streaming alternative: after a complete backup was written into
``staging``, upload it (files, then the manifest) and verify each file's sha256 on the way.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from etcdwarden.fsutil import atomic_write, private_dir, raise_os_error
from etcdwarden.repository.base import Repository, RepositoryError, RepositoryOptions, Writer, open_repository
from etcdwarden.repository.local import LocalRepository

if TYPE_CHECKING:
    from etcdwarden.backup.stream import FileSink


class RepositorySink:
    """``FileSink``'s interface over a repository writer, with a local verification copy at ``part``."""

    def __init__(self, writer: Writer, staging: Path, local_copy: bool = True, hashed: bool = True) -> None:
        from etcdwarden.backup.stream import FileSink

        self.writer = writer
        writer.hashed = hashed
        self.path = staging / writer.name
        self.copy: FileSink | None = None
        if local_copy:
            try:
                self.copy = FileSink(self.path, hashed=False)  # the writer hashes what it uploads
            except BaseException:
                writer.discard()
                raise
        self.part = self.copy.part if self.copy is not None else staging / (writer.name + ".part")

    @property
    def sha(self) -> Any:  # hashlib's sha256 object, like FileSink.sha
        return self.writer.sha

    @property
    def size(self) -> int:
        return self.writer.size

    def write(self, data: bytes | memoryview) -> int:
        if self.copy is not None:
            self.copy.write(data)
        return self.writer.write(data)

    def finish(self) -> None:
        """fsync the local copy; the upload is completed only by :meth:`commit`."""
        if self.copy is not None:
            self.copy.finish()

    def discard(self) -> None:
        if self.copy is not None:
            self.copy.discard()
        self.writer.discard()

    def commit(self) -> None:
        self.finish()
        self.writer.commit()
        if self.copy is not None:
            self.copy.discard()  # the verification copy is no longer needed


class BackupTarget:
    """A repository as the destination of ``etcdwarden backup`` (see the module docstring)."""

    def __init__(self, location: str | Path, options: RepositoryOptions | None = None) -> None:
        self.repo: Repository = open_repository(location, options)
        self.local = isinstance(self.repo, LocalRepository)
        if isinstance(self.repo, LocalRepository):
            try:
                self.staging = private_dir(self.repo.directory)
            except OSError as e:
                raise_os_error(e, self.repo.directory)
            self._temp = False
        else:
            self.staging = Path(tempfile.mkdtemp(prefix="etcdwarden-backup-"))
            self._temp = True

    def names(self) -> set[str]:
        """Object names already in the repository (to pick a timestamp nobody uses)."""
        return {o.name for o in self.repo.list()}

    def sink(self, name: str, local_copy: bool = True, hashed: bool = True) -> FileSink | RepositorySink:
        """A sink for ``name``; ``hashed=False`` when the caller hashes the same bytes itself."""
        if self.local:
            from etcdwarden.backup.stream import FileSink

            return FileSink(self.staging / name, hashed=hashed)
        return RepositorySink(self.repo.open_write(name), self.staging, local_copy, hashed)

    def write_manifest(self, name: str, data: bytes) -> None:
        """Write the manifest: the last object of a backup, atomically."""
        if self.local:
            atomic_write(self.staging / name, data)
        else:
            self.repo.write_bytes(name, data)

    def remove(self, name: str) -> None:
        """Remove an object this run committed (when the run fails before its manifest)."""
        if self.local:
            with contextlib.suppress(FileNotFoundError):
                (self.staging / name).unlink()
        else:
            with contextlib.suppress(RepositoryError):
                self.repo.delete(name)

    def publish(self, backup_id: str) -> None:
        """Upload the backup ``backup_id`` written into ``staging`` (no-op for a local repository)."""
        if self.local:
            return
        from etcdwarden.repository.catalog import load_catalog
        from etcdwarden.repository.transfer import copy_backup

        staged = LocalRepository(self.staging, create=False)
        copy_backup(staged, self.repo, load_catalog(staged).get(backup_id))

    def where(self, name: str) -> str:
        return self.repo.where(name)

    def close(self) -> None:
        if self._temp:
            shutil.rmtree(self.staging, ignore_errors=True)
        self.repo.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

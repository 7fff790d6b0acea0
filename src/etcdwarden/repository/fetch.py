"""Bring the files of one backup from a repository into a local directory, verified on the way down.

Each file the manifest lists is streamed from the repository into a new file (mode 0600, never an
existing one) while its size and sha256 are compared with the manifest's; a file that does not match
is removed and :class:`CorruptObject` raised, so nothing unproven is left to be used. The directory
is the caller's (a private scratch directory: decoded etcd data never goes to the system temp dir).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from etcdwarden.format.manifest import FileEntry
from etcdwarden.fsutil import raise_os_error
from etcdwarden.repository.base import CHUNK, Repository, RepositoryError


class CorruptObject(RepositoryError):
    """A file read from the repository is not what the manifest records (size or sha256)."""


def fetch(repo: Repository, name: str, dest: Path, want: FileEntry) -> Path:
    """Stream object ``name`` into the new file ``dest``, checking it against ``want``; returns ``dest``."""
    sha = hashlib.sha256()
    size = 0
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise_os_error(e, dest)
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            for chunk in repo.open_read(name, CHUNK):
                size += len(chunk)
                if size > want.size:
                    break
                sha.update(chunk)
                f.write(chunk)
        digest = sha.hexdigest()
        if size != want.size or digest != want.sha256:
            got = f"more than {want.size} bytes" if size > want.size else f"{size} bytes with sha256 {digest}"
            raise CorruptObject(f"{repo.where(name)}: read {got}, but the manifest records {want.size} bytes with "
                                f"sha256 {want.sha256}; the backup is damaged (`etcdwarden backups list --verify`)")
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise_os_error(e, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink(missing_ok=True)
        raise
    return dest


def fetch_files(repo: Repository, files: dict[str, FileEntry], names: Iterable[str], into: Path) -> dict[str, Path]:
    """:func:`fetch` each of ``names`` (keys of the manifest's ``files``) into the directory ``into``."""
    return {name: fetch(repo, name, into / name, files[name]) for name in names}

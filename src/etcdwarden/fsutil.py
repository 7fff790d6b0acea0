"""Durable file-system operations: write to a temporary name, fsync, rename, fsync the directory.

Also a directory lock (``flock``) so two runs never write into the same backup directory at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from etcdwarden.errors import EtcdwardenError


class DiskFull(EtcdwardenError):
    """No space left on the device we write to."""


class Locked(EtcdwardenError):
    """Another etcdwarden run holds the lock of this directory."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 for what we create; fsync the parent."""
    existed = path.is_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not existed:
        os.chmod(path, 0o700)
        fsync_dir(path.parent)
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically and durably (tmp name, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise_os_error(e, path)


def raise_os_error(e: OSError, path: Path) -> None:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFull(f"no space left on the device while writing {path}; free space or choose another "
                       "directory (nothing earlier was touched)") from None
    raise EtcdwardenError(f"cannot write {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def dir_lock(directory: Path, wait: float = 0.0, name: str = ".etcdwarden.lock") -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (waiting up to ``wait`` seconds)."""
    path = directory / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise Locked(
                        f"another etcdwarden run (pid {holder}) is writing into {directory}; "
                        "wait for it to finish or pass --lock-wait SECONDS"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)

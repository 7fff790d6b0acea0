"""Durable file-system operations: write to a temporary name, fsync, rename, fsync the directory.

Also a directory lock (``flock``) so two runs never write into the same backup directory at once. The
lock file records its holder (PID, process start time, host name), so the next holder knows whether
the previous one is gone and may clean up after it (:func:`etcdwarden.repository.local.remove_stale_temp`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from etcdwarden.errors import EtcdwardenError, setting


class DiskFull(EtcdwardenError):
    """No space left on the device we write to."""


class Locked(EtcdwardenError):
    """Another etcdwarden run holds the lock of this directory."""


class NotWritable(EtcdwardenError):
    """The directory cannot be written (read-only or immutable, a read-only mount, no permission)."""


#: errors that mean "this directory cannot be written", whoever we are
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def not_writable_hint(directory: Path) -> str:
    return (f"{directory} is not writable for this user (uid {os.getuid()}): check its owner and mode, the "
            f"immutable flag (`lsattr -d {directory}`; `chattr -i` clears it) and whether it is on a read-only "
            "mount, or choose another directory")


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


def raise_os_error(e: OSError, path: Path) -> NoReturn:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFull(f"no space left on the device while writing {path}; free space or choose another "
                       "directory (nothing earlier was touched)") from None
    if e.errno in _NOT_WRITABLE:
        raise NotWritable(f"cannot write {path}: {e.strerror}; {not_writable_hint(path.parent)}") from None
    raise EtcdwardenError(f"cannot write {path}: {e.strerror or e}") from None


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), ``None`` when unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after its last ")"
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a directory lock."""

    pid: int
    start: int | None  # process start time, to tell a reused PID apart
    host: str

    @classmethod
    def me(cls) -> Holder:
        return cls(os.getpid(), process_start(os.getpid()), os.uname().nodename)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        parts = text.split()
        try:
            pid = int(parts[0])
        except (IndexError, ValueError):
            return None
        start = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        return cls(pid, start, parts[2] if len(parts) > 2 else "")

    def render(self) -> str:
        return f"{self.pid} {self.start if self.start is not None else '-'} {self.host}\n"

    def gone(self) -> bool:
        """True only when this holder's process surely no longer exists (same host; PID dead or reused)."""
        if self.host != os.uname().nodename:
            return False  # another machine (a shared mount): its processes are not ours to judge
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, someone else's
        start = process_start(self.pid)
        return self.start is not None and start is not None and start != self.start


@dataclass(frozen=True)
class LockInfo:
    """A held directory lock: its file, and who held it before us (``None``: nobody recorded)."""

    path: Path
    previous: Holder | None


@contextlib.contextmanager
def dir_lock(directory: Path, wait: float = 0.0, name: str = ".etcdwarden.lock") -> Iterator[LockInfo]:
    """Hold an exclusive lock on ``directory`` (waiting up to ``wait`` seconds); record ourselves in it."""
    path = directory / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        if e.errno in _NOT_WRITABLE:
            raise NotWritable(f"cannot take the lock {path}: {e.strerror}; {not_writable_hint(directory)}") from None
        if e.errno == errno.ENOTDIR:
            raise NotWritable(f"cannot take the lock {path}: {directory} is not a directory") from None
        raise EtcdwardenError(f"cannot take the lock {path}: {e.strerror or e}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = Holder.parse(os.pread(fd, 256, 0).decode(errors="replace"))
                    raise Locked(
                        f"another etcdwarden run (pid {holder.pid if holder else '?'}) is writing into {directory}; "
                        f"wait for it to finish, or {setting('lock_wait')}"
                    ) from None
                time.sleep(0.2)
        previous = Holder.parse(os.pread(fd, 256, 0).decode(errors="replace"))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, Holder.me().render().encode(), 0)
        except OSError as e:
            raise_os_error(e, path)
        yield LockInfo(path, previous)
    finally:
        os.close(fd)

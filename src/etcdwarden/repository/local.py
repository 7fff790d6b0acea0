"""``file://`` repositories: a local directory (the default; a plain path means ``file://``).

Writes go to ``<name>.part`` (mode 0600), are fsynced, renamed into place and the directory is fsynced,
so a crash leaves either the old state or the whole object, never a torn one under the final name.
Only regular files directly in the directory are objects: sub-directories (``lost+found``, a
hand-made folder) are not listed and never touched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import io
import mmap
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Self
from urllib.parse import unquote, urlsplit

from etcdwarden.errors import UsageError
from etcdwarden.fsutil import (
    DiskFull,
    Holder,
    LockInfo,
    dir_lock,
    fsync_dir,
    not_writable_hint,
    private_dir,
    raise_os_error,
)
from etcdwarden.repository.base import (
    CHUNK,
    ObjectInfo,
    ObjectNotFound,
    Repository,
    RepositoryError,
    RepositoryOptions,
    StaleCleanup,
    Writer,
    check_name,
)

PART_SUFFIX = ".part"
_TMP_PID = re.compile(r"\.tmp-(\d+)$")


def _info(name: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(name, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))


class LocalWriter(Writer):
    """``<name>.part`` (0600), written in blocks of :attr:`BUFFER`; fsync, rename, directory fsync on commit.

    The snapshot arrives in 32 KiB messages, and one ``write(2)`` per message costs several times the CPU
    of the copy itself: small writes are gathered until they make 1 MiB and handed to the kernel in one
    ``writev(2)`` (the pieces are kept as they came, not copied into a buffer first).

    ``bulk`` (a large object written once, not read back by this process: a backup's snapshot): written past
    the page cache (``O_DIRECT``) from one page-aligned 1 MiB buffer. Filling the page cache is most of what
    writing a file costs the CPU (measured on this project's 2-core machine: 1.6-2.9 s of system time per GiB
    buffered, 0.1 s direct, the disk itself at ~2 GB/s), and those pages would only push the cluster's own
    out of memory. The end of the object (less than a block) is written through the page cache; a file
    system without direct I/O gets every byte that way. ``fsync`` on commit makes either durable.
    """

    BUFFER = 1 << 20
    _IOV_MAX = 1024

    def __init__(self, directory: Path, name: str, bulk: bool = False) -> None:
        super().__init__(name)
        self.path = directory / name
        self.part = directory / (name + PART_SUFFIX)
        self.fd: int | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.direct: mmap.mmap | None = None  # the aligned buffer, while writing past the page cache
        self.fill = 0
        try:
            self.fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            self._os_error(e)
        if bulk and hasattr(os, "O_DIRECT"):
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_DIRECT)
            except OSError:
                pass  # a file system without direct I/O: through the page cache
            else:
                self.direct = mmap.mmap(-1, self.BUFFER)

    def _os_error(self, e: OSError) -> NoReturn:
        try:
            raise_os_error(e, self.part)
        except DiskFull:
            raise
        except Exception as err:
            raise RepositoryError(str(err)) from None

    def _write(self, data: bytes | memoryview) -> None:
        if self.direct is not None:
            self._write_direct(data)
            return
        # a caller may reuse a buffer it lent us: keep only immutable bytes
        self.pending.append(data if isinstance(data, bytes) else bytes(data))
        self.pending_size += len(data)
        if self.pending_size >= self.BUFFER or len(self.pending) >= self._IOV_MAX:
            self.flush()

    def _write_direct(self, data: bytes | memoryview) -> None:
        buf, size = self.direct, self.BUFFER
        assert buf is not None
        view = memoryview(data)
        pos, n = 0, len(view)
        while pos < n:
            k = min(n - pos, size - self.fill)
            buf[self.fill : self.fill + k] = view[pos : pos + k]
            self.fill += k
            pos += k
            if self.fill == size:
                self._put_direct(size)

    def _put_direct(self, upto: int) -> None:
        """Write the buffer's first ``upto`` bytes (whole blocks) past the page cache; what a short write or a
        refusal of direct I/O leaves goes through the page cache, and so does everything after it."""
        assert self.direct is not None and self.fd is not None
        written = 0
        try:
            written = os.write(self.fd, memoryview(self.direct)[:upto])
        except OSError as e:
            if e.errno != errno.EINVAL:  # EINVAL: this file system wants other alignment, or no direct I/O
                self._os_error(e)
        if written < upto:
            self._end_direct(written)
            return
        self.direct[: self.fill - upto] = self.direct[upto : self.fill]
        self.fill -= upto

    def _end_direct(self, start: int) -> None:
        """Leave direct I/O; what the buffer holds from ``start`` on goes on through the page cache."""
        assert self.direct is not None and self.fd is not None
        buf, self.direct = self.direct, None
        rest, self.fill = buf[start : self.fill], 0
        buf.close()
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        except OSError as e:
            self._os_error(e)
        if rest:
            self._write(rest)

    def flush(self) -> None:
        if self.direct is not None:
            whole = self.fill - self.fill % 4096
            if whole:
                self._put_direct(whole)
            if self.direct is not None and self.fill:  # the end of the object: not a whole block
                self._end_direct(0)
        if not self.pending:
            return
        if self.fd is None:
            raise RepositoryError(f"{self.part}: write after commit or discard")
        pending, size = self.pending, self.pending_size
        self.pending, self.pending_size = [], 0
        try:
            written = os.writev(self.fd, pending)
            if written < size:  # a short write (rare): the rest one piece at a time
                for piece in pending:
                    if written >= len(piece):
                        written -= len(piece)
                        continue
                    view = memoryview(piece)[written:]
                    written = 0
                    while view:
                        view = view[os.write(self.fd, view):]
        except OSError as e:
            self._os_error(e)

    def sync(self) -> None:
        self.flush()
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError as e:
                self._os_error(e)

    def _commit(self) -> None:
        self.flush()
        assert self.fd is not None
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.rename(self.part, self.path)
            fsync_dir(self.path.parent)
        except OSError as e:
            self._os_error(e)

    def _discard(self) -> None:
        self.pending, self.pending_size = [], 0
        if self.direct is not None:
            self.direct.close()
            self.direct = None
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()


class LocalRepository(Repository):
    scheme = "file"

    def __init__(self, directory: Path, create: bool = True) -> None:
        self.directory = directory
        self.url = "file://" + str(directory)
        self._create = create

    @classmethod
    def from_url(cls, url: str, options: RepositoryOptions) -> Self:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"{url}: a file:// URL names a local path (file:///path), not host {parts.netloc!r}")
        if parts.query:
            raise UsageError(f"{url}: a file:// repository takes no options")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise UsageError(f"{url}: the path of a file:// URL must be absolute")
        return cls(path)

    def _dir_for_write(self) -> Path:
        if self._create and not self.directory.is_dir():
            try:
                private_dir(self.directory)
            except OSError as e:
                raise RepositoryError(
                    f"cannot create the repository directory {self.directory}: {e.strerror}") from None
        return self.directory

    def list(self) -> list[ObjectInfo]:
        if not self.directory.exists():
            return []
        out: list[ObjectInfo] = []
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        out.append(_info(entry.name, st))
        except OSError as e:
            raise RepositoryError(f"cannot list {self.directory}: {e.strerror}") from None
        return sorted(out, key=lambda o: o.name)

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            st = os.stat(self.directory / check_name(name), follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RepositoryError(f"cannot stat {self.directory / name}: {e.strerror}") from None
        return _info(name, st) if stat.S_ISREG(st.st_mode) else None

    def fingerprint(self, name: str) -> str | None:
        """size, mtime, ctime (ns), inode and device: any write, rename over or ``touch`` changes it."""
        try:
            st = os.stat(self.directory / check_name(name), follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RepositoryError(f"cannot stat {self.directory / name}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            return None
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"

    def open_read(self, name: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self.directory / check_name(name)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.where(name)}: no such object") from None
        except OSError as e:
            raise RepositoryError(f"cannot read {path}: {e.strerror}") from None
        return _chunks(f, chunk_size)

    def open_write(self, name: str, bulk: bool = False) -> Writer:
        return LocalWriter(self._dir_for_write(), check_name(name), bulk)

    def delete(self, name: str) -> None:
        path = self.directory / check_name(name)
        try:
            st = os.stat(path, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise RepositoryError(f"{path} is not a regular file; not deleting it")
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            hint = f"; {not_writable_hint(self.directory)}" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) \
                else ""
            raise RepositoryError(f"cannot delete {path}: {e.strerror}{hint}") from None

    def remove_stale(self, lock: LockInfo) -> StaleCleanup:
        return remove_stale_temp(self.directory, lock)

    def local_directory(self) -> Path:
        return self.directory

    def sync(self) -> None:
        if self.directory.is_dir():
            fsync_dir(self.directory)

    def local_path(self, name: str) -> Path | None:
        return self.directory / check_name(name)

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0, create: bool = False) -> Iterator[LockInfo | None]:
        """The directory lock every writer of this repository holds (``None`` if the directory does not
        exist and ``create`` is false: there is nothing to protect yet)."""
        if create:
            self._dir_for_write()
        if not self.directory.is_dir():
            yield None
            return
        with dir_lock(self.directory, wait) as info:
            yield info


def remove_stale_temp(directory: Path, lock: LockInfo) -> StaleCleanup:
    """Remove the temporary files (``.part``, ``.tmp-<pid>``) a dead run left in ``directory``.

    Call it holding the directory's lock (``lock``). Only names of etcdwarden's own temporary pattern are
    touched. A ``.tmp-<pid>`` file names its writer: removed when that process is gone. A ``.part``
    file of a backup (snapshot, resources, manifest) is written only under the lock, so its writer is the
    previous holder recorded in the lock file: removed when that process is gone (dead, or its PID reused), or
    is this very process (whose earlier run has ended, since we hold the lock now); never when the previous
    holder is alive, unknown, or on another host. Segments, segment manifests, drill records and the
    receiver's state are written without the lock by other tasks of a process (the daemon's receiver and
    drills): their ``.part`` files are removed only when the previous holder is gone, never because it is
    this very process (the receiver may be writing one right now).
    """
    from etcdwarden.format.names import Kind, internal, is_temp, parse

    out = StaleCleanup()
    me = Holder.me()
    prev = lock.previous
    prev_gone = prev is not None and (prev.gone() or prev == me)
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_file(follow_symlinks=False))
    except OSError:
        return out
    for name in names:
        ours = is_temp(name) or (internal(name) and (_TMP_PID.search(name) or name.endswith(PART_SUFFIX)))
        if not ours:
            continue
        m = _TMP_PID.search(name)
        if m is not None:
            pid = int(m.group(1))
            writer = Holder(pid, None, me.host)
            if pid == me.pid or not writer.gone():
                out.left[name] = f"its writer (pid {pid}) is still running"
                continue
        elif not prev_gone:
            out.left[name] = ("the previous lock holder " + (f"(pid {prev.pid}) is still running or unknown"
                                                              if prev is not None else "is not recorded"))
            continue
        if m is None and prev == me:
            n = parse(name)
            if n is None or n.kind not in (Kind.SNAPSHOT, Kind.RESOURCES, Kind.MANIFEST):
                out.left[name] = "written without the lock by another task of this process (it may be writing it now)"
                continue
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            out.left[name] = f"cannot remove it: {e.strerror}"
            continue
        out.removed.append(name)
    if out.removed:
        with contextlib.suppress(OSError):
            fsync_dir(directory)
    return out


def _chunks(f: io.FileIO, chunk_size: int) -> Iterator[bytes]:
    with f:
        while True:
            data = f.read(chunk_size)
            if not data:
                return
            yield data

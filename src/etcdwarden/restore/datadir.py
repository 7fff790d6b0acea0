"""Swap a freshly restored data directory into place without ever deleting the one it replaces.

``D.restoring-<tag>`` (written by etcdutl next to ``D``, so on the same file system) is exchanged with
``D`` atomically (``renameat2(RENAME_EXCHANGE)``); the old ``D`` then gets the name
``D.pre-restore-<tag>``. Where the exchange is unsupported, two renames are used, and a failure of the
second puts ``D`` back. The only directory ever removed is our own half-written ``.restoring-`` one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import errno
import os
import shutil
from pathlib import Path

from etcdwarden.errors import EtcdwardenError
from etcdwarden.fsutil import fsync_dir

RESTORING = ".restoring-"
PRE_RESTORE = ".pre-restore-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def new_tag(now: dt.datetime | None = None) -> str:
    t = now or dt.datetime.now(dt.UTC)
    return t.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def restoring_dir(data_dir: Path, tag: str) -> Path:
    return data_dir.with_name(f"{data_dir.name}{RESTORING}{tag}")


def aside_dir(data_dir: Path, tag: str) -> Path:
    base = data_dir.with_name(f"{data_dir.name}{PRE_RESTORE}{tag}")
    p, n = base, 1
    while p.exists() or p.is_symlink():
        n += 1
        p = base.with_name(f"{base.name}.{n}")
    return p


OWNER = ".owner"


def _owner_file(restoring: Path) -> Path:
    return restoring.with_name(restoring.name + OWNER)


def claim_restoring(restoring: Path) -> None:
    """Record which process writes ``restoring`` (PID and start time), so a killed run's is recognised."""
    from etcdwarden.snapshot.scratch import process_start

    pid = os.getpid()
    _owner_file(restoring).write_text(f"{pid} {process_start(pid) or 0}\n")


def release_restoring(restoring: Path) -> None:
    _owner_file(restoring).unlink(missing_ok=True)


def sweep_restoring(data_dir: Path) -> list[str]:
    """Remove the ``D.restoring-*`` directories (and their ``.verify`` copies) of runs that were killed."""
    from etcdwarden.snapshot.scratch import process_start

    notes: list[str] = []
    try:
        owners = sorted(data_dir.parent.glob(f"{data_dir.name}{RESTORING}*{OWNER}"))
    except OSError:
        return notes
    for f in owners:
        try:
            pid_s, start_s = f.read_text().split()
            pid, start = int(pid_s), int(start_s)
        except (OSError, ValueError):
            continue
        if process_start(pid) == start:
            continue  # its run is still going
        restoring = f.with_name(f.name[: -len(OWNER)])
        for d in (restoring, restoring.with_name(f"{restoring.name}.verify")):
            if d.exists():
                remove_restoring(d)
                notes.append(f"removed {d}: left by an interrupted restore (PID {pid}, gone)")
        f.unlink(missing_ok=True)
    return notes


def remove_restoring(path: Path) -> None:
    """Remove a half-written ``.restoring-`` directory (refuses any other name)."""
    if RESTORING not in path.name:
        raise EtcdwardenError(f"refusing to remove {path}: not a .restoring- directory")
    shutil.rmtree(path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def move_aside(data_dir: Path, tag: str) -> Path | None:
    """Rename ``data_dir`` to ``D.pre-restore-<tag>``; ``None`` when there is nothing there."""
    if not (data_dir.exists() or data_dir.is_symlink()):
        return None
    aside = aside_dir(data_dir, tag)
    os.rename(data_dir, aside)
    fsync_dir(data_dir.parent)
    return aside


def swap_into_place(restoring: Path, data_dir: Path, tag: str) -> Path | None:
    """Put ``restoring`` at ``data_dir``; return where the previous ``data_dir`` went (or ``None``)."""
    if data_dir.exists() and not data_dir.is_symlink() and data_dir.is_dir():
        target = aside_dir(data_dir, tag)
        if _exchange(restoring, data_dir):
            os.rename(restoring, target)  # ``restoring`` now names the old data dir
            fsync_dir(data_dir.parent)
            return target
    aside = move_aside(data_dir, tag)
    try:
        os.rename(restoring, data_dir)
    except OSError:
        if aside is not None:
            os.rename(aside, data_dir)
        raise
    fsync_dir(data_dir.parent)
    return aside

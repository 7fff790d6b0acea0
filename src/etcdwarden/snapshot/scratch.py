"""Private scratch directories for decoded (decrypted, decompressed) copies of a snapshot.

A decoded copy is plaintext etcd data (Secrets included), so it never goes to the system temp dir: it
lives in a directory of its own, mode 0700, created *next to the target* (the data directory being
restored, or the file being read), named ``.etcdwarden-tmp-<pid>-<start>-<random>`` after the process
that owns it (``<start>`` is the process start time from ``/proc/<pid>/stat``, so a recycled PID is not
mistaken for the owner). It is removed when the block using it ends, however it ends (an exception, a
signal turned into one, ``KeyboardInterrupt``). A run killed outright (SIGKILL, power loss) cannot clean
up: the next run that uses the same place finds the directory, sees that its owner is gone, removes it
and says so.

A backup into an object store keeps its stream check's summaries (keys of the database) in such a directory
of the system's temp dir (:func:`new_private_dir`), swept the same way by the next backup that needs one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from etcdwarden.errors import EtcdwardenError

log = logging.getLogger(__name__)

PREFIX = ".etcdwarden-tmp-"
_NAME = re.compile(r"^\.etcdwarden-tmp-(\d+)-(\d+)-[0-9a-f]+$")


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), ``None`` if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    try:
        return int(fields[19]) if fields[0] not in ("Z", "X") else None  # field 22 of stat(5)
    except (IndexError, ValueError):
        return None


def _owner_alive(pid: int, start: int) -> bool:
    return process_start(pid) == start


def sweep(where: Path, what: str = "a decoded snapshot copy") -> list[str]:
    """Remove the scratch directories in ``where`` whose owner process is gone; one note per directory, naming
    the directory as ``what``."""
    notes: list[str] = []
    try:
        entries = list(where.iterdir())
    except OSError:
        return notes
    for entry in entries:
        m = _NAME.match(entry.name)
        if m is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid, start = int(m.group(1)), int(m.group(2))
        if _owner_alive(pid, start):
            continue
        import shutil  # here: shutil loads bz2 and lzma, ~3 ms of every offline command's start-up

        shutil.rmtree(entry, ignore_errors=True)
        if entry.exists():
            notes.append(f"{entry}: {what} left by an interrupted run (PID {pid}, gone) could not be removed; "
                         "remove it by hand (it holds etcd data)")
        else:
            notes.append(f"removed {entry}: {what} left by an interrupted run (PID {pid}, gone)")
    return notes


def new_private_dir(near: Path) -> Path:
    """A new directory in ``near``, mode 0700 whatever the umask, named after this process (so that
    :func:`sweep` removes it once the process is gone). Raises ``OSError``."""
    path = near / f"{PREFIX}{os.getpid()}-{process_start(os.getpid()) or 0}-{os.urandom(6).hex()}"
    os.mkdir(path, 0o700)
    try:
        os.chmod(path, 0o700)
    except OSError:
        os.rmdir(path)
        raise
    return path


def existing_dir(path: Path) -> Path:
    """``path`` or its nearest existing ancestor directory."""
    p = path.absolute()
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


@contextlib.contextmanager
def scratch_dir(near: Path, notes: list[str] | None = None) -> Iterator[Path]:
    """A new private (0700) directory in ``near``, removed with everything in it when the block ends.

    Leftovers of dead runs in ``near`` are removed first: their notes are appended to ``notes``, or logged
    as warnings when the caller gives no list.
    """
    found = sweep(near)
    if notes is not None:
        notes.extend(found)
    else:
        for n in found:
            log.warning(n)
    try:
        path = new_private_dir(near)
    except OSError as e:
        raise EtcdwardenError(f"cannot create a private temporary directory in {near} for the decoded copy of the "
                              f"snapshot ({e.strerror or e}); decoded copies are kept next to their target, never in "
                              "the system temp dir: make that directory writable, or copy the file to one that "
                              "is") from None
    try:
        yield path
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)

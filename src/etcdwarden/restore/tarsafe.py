"""Take one directory out of a tar archive without letting the archive write anywhere else.

A resources bundle comes back from a repository someone else may have written to: before anything is
extracted, every member of the archive is checked, and the whole archive is refused
(:class:`UnsafeArchive`, exit 3, nothing extracted) when one member has an absolute path, a ``..``
component, is a device file or a FIFO, or is a link (symbolic or hard) that resolves outside the
directory being extracted. What is extracted goes through the standard library's ``data`` filter too
(defence in depth: no set-uid bits, no group/other write, no owner taken from the archive).

:func:`extract` writes the directory ``prefix`` of the archive into a new directory ``dest`` (the
members renamed relative to ``prefix``); :func:`repack` writes the same members, checked and
filtered, into a new ``tar.gz`` for a host that extracts with its own ``tar`` (SSH members).
"""

from __future__ import annotations

import copy
import os
import posixpath
import tarfile
from pathlib import Path, PurePosixPath

from etcdwarden.errors import EtcdwardenError, SafetyRefusal


class UnsafeArchive(SafetyRefusal):
    """An archive with a member that could write outside its target (or create a device): refused whole."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


def member_problem(m: tarfile.TarInfo) -> str | None:
    """Why ``m`` may not be extracted anywhere (``None``: it may)."""
    name = m.name
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a '..' component (path traversal)"
    if m.ischr() or m.isblk():
        return "a device file"
    if m.isfifo():
        return "a FIFO"
    if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
        return "a member of an unsupported type"
    if m.issym() or m.islnk():
        target = m.linkname
        if target.startswith("/"):
            return f"a link to the absolute path {target}"
        base = posixpath.dirname(name) if m.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return f"a link out of the archive ({target})"
    return None


def check_archive(members: list[tarfile.TarInfo], label: str) -> None:
    for m in members:
        problem = member_problem(m)
        if problem is not None:
            raise UnsafeArchive(f"{label}: member {m.name!r} is {problem}: the archive is refused whole and nothing "
                                "was extracted. It is not a bundle etcdwarden wrote; check where it came from")


def _select(members: list[tarfile.TarInfo], prefix: str, label: str) -> tuple[list[tarfile.TarInfo], int]:
    """The members below ``prefix``, renamed relative to it; links must stay below it. The prefix's own mode."""
    top = prefix.strip("/")
    out: list[tarfile.TarInfo] = []
    mode = 0o755
    for m in members:
        name = m.name.rstrip("/")
        if name == top:
            mode = m.mode & 0o755 if m.isdir() else mode
            continue
        if not name.startswith(top + "/"):
            continue
        rel = name[len(top) + 1:]
        r = copy.copy(m)
        r.name = rel
        # a long name lives in the member's pax header too, which would win when the member is written again
        r.pax_headers = {k: v for k, v in m.pax_headers.items() if k not in ("path", "linkpath")}
        if m.issym():
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), m.linkname))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchive(f"{label}: member {m.name!r} is a symbolic link out of {top} ({m.linkname}): "
                                    "the archive is refused and nothing was extracted")
        if m.islnk():
            if not m.linkname.startswith(top + "/"):
                raise UnsafeArchive(f"{label}: member {m.name!r} is a hard link to {m.linkname}, outside {top}: "
                                    "the archive is refused and nothing was extracted")
            r.linkname = m.linkname[len(top) + 1:]
        out.append(r)
    if not out:
        raise EtcdwardenError(f"{label} holds nothing under {top}/: the bundle does not have what its manifest lists")
    return out, mode


def _open(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise EtcdwardenError(f"{archive}: not a readable tar archive: {e}") from None


def listing(archive: Path, label: str | None = None) -> list[tarfile.TarInfo]:
    """Every member of ``archive``, after :func:`check_archive`."""
    with _open(archive) as tar:
        members = tar.getmembers()
    check_archive(members, label or str(archive))
    return members


def extract(archive: Path, prefix: str, dest: Path, label: str | None = None) -> int:
    """Extract the directory ``prefix`` of ``archive`` as the new directory ``dest``; the member count."""
    name = label or str(archive)
    with _open(archive) as tar:
        members = tar.getmembers()
        check_archive(members, name)
        chosen, mode = _select(members, prefix, name)
        os.mkdir(dest, 0o700)
        for m in chosen:
            try:
                tar.extract(m, dest, set_attrs=True, filter="data")
            except tarfile.FilterError as e:
                raise UnsafeArchive(f"{name}: member {m.name!r} refused: {e}") from None
        os.chmod(dest, mode)
    return len(chosen)


def repack(archive: Path, prefix: str, out: Path, label: str | None = None) -> int:
    """Write the checked, filtered members below ``prefix`` into the new ``tar.gz`` ``out`` (names relative)."""
    name = label or str(archive)
    with _open(archive) as tar:
        members = tar.getmembers()
        check_archive(members, name)
        chosen, _mode = _select(members, prefix, name)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as dst:
            for m in chosen:
                try:
                    tarfile.data_filter(m, "/nonexistent-root")  # the same checks as a local extraction
                except tarfile.FilterError as e:
                    raise UnsafeArchive(f"{name}: member {m.name!r} refused: {e}") from None
                clean = copy.copy(m)
                clean.uid = clean.gid = 0
                clean.uname = clean.gname = ""
                clean.mode = 0o777 if m.issym() else m.mode & 0o755  # no set-uid bits, no group/other write
                data = tar.extractfile(m) if m.isreg() else None
                dst.addfile(clean, data)
    return len(chosen)

"""The resources bundle: a tar.gz of the files a restore needs besides the snapshot.

Static pod manifests, PKI, the EncryptionConfiguration (the keys to read an encrypted snapshot).
Every path must exist (a missing one is an error, not a silent skip). Certificates found in the
bundle are checked: one that expires within 30 days, or was issued less than 24 hours ago (a backup
taken before the first rotation restores soon-expired certificates), is reported.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etcdwarden.errors import UsageError, setting

PEM_CERT = b"-----BEGIN CERTIFICATE-----"
EXPIRY_WINDOW = dt.timedelta(days=30)
FRESH_WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True)
class CertificateNote:
    path: str
    subject: str
    not_before: str
    not_after: str
    problem: str

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "subject": self.subject, "not_before": self.not_before,
                "not_after": self.not_after, "problem": self.problem}


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file or directory"


def check_paths(paths: list[Path]) -> list[Path]:
    """Every path exists and is a regular file or a directory (or a symlink to one); resolved.

    Devices, FIFOs and sockets are refused (exit 2): they hold no content a restore could use, and
    reading a FIFO or a device would hang or never end.
    """
    missing: list[str] = []
    special: list[str] = []
    for p in paths:
        try:
            st = os.stat(p)  # follows symlinks: a link is judged by what it points to
        except OSError:
            missing.append(str(p))
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            special.append(f"{p} is {_kind(st.st_mode)}")
    if missing:
        raise UsageError(f"resource path(s) not found: {', '.join(missing)}; fix {setting('resources')} "
                         "(nothing was written)")
    if special:
        raise UsageError(f"{setting('resources')} must be regular files and directories: {'; '.join(special)} "
                         "(nothing was written)")
    return [p.resolve() for p in paths]


def _files(paths: list[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            for root, _dirs, files in os.walk(p):
                for f in sorted(files):
                    yield Path(root) / f
        else:
            yield p


def certificate_notes(paths: list[Path], now: dt.datetime | None = None) -> list[CertificateNote]:
    from cryptography import x509  # only when there is a bundle to look at (keeps a plain backup lean)

    now = now or dt.datetime.now(dt.UTC)
    notes: list[CertificateNote] = []
    for f in _files(paths):
        try:
            if not f.is_file() or f.stat().st_size > 1 << 20:
                continue
            data = f.read_bytes()
        except OSError:
            continue
        if PEM_CERT not in data:
            continue
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            continue
        for c in certs:
            nb, na = c.not_valid_before_utc, c.not_valid_after_utc
            problem = None
            if na <= now:
                problem = "expired"
            elif na - now < EXPIRY_WINDOW:
                problem = f"expires within 30 days ({na:%Y-%m-%d})"
            elif now - nb < FRESH_WINDOW:
                problem = "issued less than 24 hours ago (a backup before the first rotation restores it)"
            if problem:
                notes.append(CertificateNote(str(f), c.subject.rfc4514_string(), nb.isoformat(), na.isoformat(),
                                             problem))
    return notes


class _Writer(io.RawIOBase):
    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sink.write(data)
        return len(data)


def write_bundle(paths: list[Path], sink: Any, skipped: list[str] | None = None) -> int:
    """Write a tar.gz of ``paths`` into ``sink`` (an object with ``write``); returns the file count.

    Special files found inside directories are left out and listed in ``skipped``.
    """
    left_out: list[str] = [] if skipped is None else skipped
    count = 0
    with tarfile.open(fileobj=_Writer(sink), mode="w|gz") as tar:
        for p in paths:
            for entry in _ordered(p, left_out):
                try:
                    tar.add(str(entry), arcname=str(entry).lstrip("/"), recursive=False)
                except OSError as e:
                    raise UsageError(f"cannot read resource {entry}: {e.strerror or e}") from None
        count = len(tar.getmembers())
    return count


def _unreadable(e: OSError) -> None:
    raise UsageError(f"cannot read resource {e.filename}: {e.strerror or e}") from None


def _ordered(path: Path, skipped: list[str]) -> Iterator[Path]:
    """``path`` and, for a directory, everything below it, each directory before what it holds.

    A device, FIFO or socket inside a bundled directory is skipped and named in ``skipped``: it has no
    content a restore could use, and a backup is not refused because a directory holds one (the
    top-level paths were checked by :func:`check_paths`). Symlinks are kept as links, never followed.
    """
    yield path
    if path.is_symlink() or not path.is_dir():
        return
    for root, dirs, files in os.walk(path, onerror=_unreadable):
        dirs.sort()
        for name in sorted(dirs + files):
            entry = Path(root) / name
            try:
                mode = entry.lstat().st_mode
            except FileNotFoundError:
                continue  # removed while we walk
            except OSError as e:
                raise UsageError(f"cannot read resource {entry}: {e.strerror or e}") from None
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
                yield entry
            else:
                skipped.append(f"{entry} ({_kind(mode).removeprefix('a ')})")

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
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etcdwarden.errors import UsageError

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


def check_paths(paths: list[Path]) -> list[Path]:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"resource path(s) not found: {', '.join(missing)}; fix --resources (nothing was written)")
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


def write_bundle(paths: list[Path], sink: Any) -> int:
    """Write a tar.gz of ``paths`` into ``sink`` (an object with ``write``); returns the file count."""
    count = 0
    with tarfile.open(fileobj=_Writer(sink), mode="w|gz") as tar:
        for p in paths:
            try:
                tar.add(str(p), arcname=str(p).lstrip("/"), recursive=True)
            except OSError as e:
                raise UsageError(f"cannot read resource {p}: {e.strerror or e}") from None
        count = len(tar.getmembers())
    return count

"""Key material: generation from the OS CSPRNG, unique names, and private atomic files.

Keys are handled as bytes and written only base64-encoded into the EncryptionConfiguration file,
which is created 0600 through a temporary file, fsync, rename and a directory fsync. Nothing here
logs; callers name keys by their name only.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

KEY_SIZE = {"aescbc": 32, "aesgcm": 32, "secretbox": 32}


def generate_key(provider_type: str) -> bytes:
    """A fresh key for ``provider_type`` (32 bytes for every key-based provider), from ``secrets``."""
    try:
        return secrets.token_bytes(KEY_SIZE[provider_type])
    except KeyError:
        raise ValueError(f"cannot generate a key for provider {provider_type!r}") from None


def unique_key_name(existing: Iterable[str], stem: str = "key") -> str:
    """``<stem><n>`` with ``n`` one above every ``<stem><number>`` in use (never reuses a name)."""
    taken = set(existing)
    pat = re.compile(re.escape(stem) + r"(\d+)$")
    n = max((int(m.group(1)) for name in taken if (m := pat.match(name))), default=0) + 1
    while f"{stem}{n}" in taken:
        n += 1
    return f"{stem}{n}"


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temp file, fsync, rename, directory fsync."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

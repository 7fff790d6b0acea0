"""Key material: generation from the OS CSPRNG, unique names, and private atomic files.

Keys are handled as bytes and written only base64-encoded into the EncryptionConfiguration file,
which is created 0600 through a temporary file, fsync, rename and a directory fsync. Nothing here
logs; callers name keys by their name only.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from etcdwarden.fsutil import atomic_write

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
    atomic_write(path, data, mode=0o600)

"""Open a snapshot as a plain bbolt file: ``.db``, ``.db.zst``, ``.db.age`` or ``.db.zst.age``.

The format is recognised from the file's first bytes (zstd frame magic, the age header line), so a
renamed file still opens; the extension only matters for error messages. Compressed or encrypted
inputs are decoded *streaming* into one file (mode 0600) of a private scratch directory (mode 0700,
see :mod:`.scratch`) next to the target (``work_dir``; by default beside the input), never in the
system temp dir; it is removed when the context exits, whatever happens, and one left by a killed
run is removed by the next.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from etcdwarden.errors import EtcdwardenError
from etcdwarden.fsutil import raise_os_error
from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError
from etcdwarden.snapshot.scratch import existing_dir, scratch_dir

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
AGE_MAGIC = b"age-encryption.org/v1"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
_CHUNK = 1 << 20


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"age"``, ``"zstd"`` or ``"db"`` from the first bytes of ``path``."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except FileNotFoundError as e:
        raise SnapshotInputError(f"{p}: no such file") from e
    except IsADirectoryError as e:
        raise SnapshotInputError(f"{p} is a directory, not a snapshot file") from e
    except OSError as e:
        raise SnapshotInputError(f"cannot read {p}: {e.strerror}") from e
    if head.startswith(AGE_MAGIC) or head.startswith(AGE_ARMOR):
        return "age"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "db"


def _load_identities(identity: str | os.PathLike[str]) -> list[object]:
    import pyrage

    try:
        text = Path(identity).read_text()
    except OSError as e:
        raise SnapshotInputError(f"cannot read the age identity file {identity}: {e.strerror}") from e
    out: list[object] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                out.append(pyrage.x25519.Identity.from_str(line))
            except Exception as e:  # pyrage raises its own IdentityError / ValueError
                raise SnapshotInputError(f"{identity}: not a valid age identity ({e})") from e
    if not out:
        raise SnapshotInputError(f"{identity} holds no age identity (a line AGE-SECRET-KEY-1...)")
    return out


def _decompress(src: BinaryIO, dst: BinaryIO, name: str) -> None:
    import zstandard

    try:
        zstandard.ZstdDecompressor().copy_stream(src, dst, read_size=_CHUNK, write_size=_CHUNK)
    except zstandard.ZstdError as e:
        raise SnapshotCorrupt(f"{name}: zstd decompression failed: {e}") from e


class _DecompressingWriter:
    """A writable file object that zstd-decompresses what is written into ``dst``."""

    def __init__(self, dst: BinaryIO) -> None:
        import zstandard

        self._w = zstandard.ZstdDecompressor().stream_writer(dst, write_size=_CHUNK, closefd=False)

    def write(self, data: bytes) -> int:
        self._w.write(data)
        return len(data)

    def flush(self) -> None:
        self._w.flush()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def open_snapshot(path: str | os.PathLike[str], identity: str | os.PathLike[str] | None = None,
                  work_dir: str | os.PathLike[str] | None = None, notes: list[str] | None = None) -> Iterator[Path]:
    """Yield a plain bbolt file path for ``path``, decoding ``.zst`` / ``.age`` into a private scratch copy.

    The copy lives in a 0700 directory created in ``work_dir`` (default: the input's directory; the
    nearest existing ancestor if it does not exist yet); notes about leftovers of killed runs removed
    there are appended to ``notes``.
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "db":
        yield p
        return
    near = existing_dir(Path(work_dir) if work_dir is not None else p.absolute().parent)
    with scratch_dir(near, notes) as scratch:
        tmp = scratch / "snapshot.db"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as dst, open(p, "rb") as src:
                if fmt == "zstd":
                    _decompress(src, dst, str(p))
                else:
                    _decrypt(src, dst, p, identity)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise_os_error(e, tmp)
            raise EtcdwardenError(f"cannot decode {p} into {tmp}: {e.strerror or e}") from None
        yield tmp


def _decrypt(src: BinaryIO, dst: BinaryIO, p: Path, identity: str | os.PathLike[str] | None) -> None:
    import pyrage
    import zstandard

    if identity is None:
        raise SnapshotInputError(f"{p} is age-encrypted: give the identity file with --identity FILE")
    identities = _load_identities(identity)
    # Peek at the plaintext's first bytes by decrypting into a sniffing writer: if it is zstd, the
    # stream is decompressed on the fly so only one temporary file is ever written.
    sink = _SniffingSink(dst)
    try:
        pyrage.decrypt_io(src, sink, identities)  # type: ignore[arg-type]
    except pyrage.DecryptError as e:
        raise SnapshotInputError(f"{p}: cannot decrypt with {identity}: {e}") from e
    except zstandard.ZstdError as e:
        raise SnapshotCorrupt(f"{p}: zstd decompression failed: {e}") from e
    sink.close()


class _SniffingSink:
    """Writes plaintext to ``dst``, decompressing it on the fly when it starts with the zstd magic."""

    def __init__(self, dst: BinaryIO) -> None:
        self._dst = dst
        self._head = b""
        self._target: BinaryIO | _DecompressingWriter | None = None

    def _choose(self, final: bool) -> None:
        if self._target is None and (len(self._head) >= len(ZSTD_MAGIC) or final):
            self._target = _DecompressingWriter(self._dst) if self._head.startswith(ZSTD_MAGIC) else self._dst
            head, self._head = self._head, b""
            self._target.write(head)

    def write(self, data: bytes) -> int:
        if self._target is None:
            self._head += bytes(data)
            self._choose(final=False)
        else:
            self._target.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        if self._target is not None:
            self._target.flush()

    def close(self) -> None:
        self._choose(final=True)
        self.flush()

    def writable(self) -> bool:
        return True

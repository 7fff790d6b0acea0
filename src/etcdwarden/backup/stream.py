"""Stream a ``Maintenance.Snapshot`` into files while proving what was received.

The server sends the database bytes in 32 KiB chunks and, last, 32 bytes: the SHA-256 of the
database. We hash as we stream (holding back the final 32 bytes), check that trailer (etcdctl does
not), and keep it in the file so plain ``etcdutl snapshot restore`` accepts the result.

Sinks are written to ``<name>.part`` (0600), fsynced and renamed only by the caller once every check
passed; any failure removes them. Encoded output (zstd, age) runs in a worker thread fed through a
bounded queue, so memory stays flat whatever the database size.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from etcdwarden.errors import EtcdwardenError
from etcdwarden.fsutil import raise_os_error

TRAILER = 32


class SnapshotStreamError(EtcdwardenError):
    """The snapshot stream was incomplete or did not match its own checksum."""


class FileSink:
    """A ``.part`` file that hashes what is written to it.

    Writes are gathered into 1 MiB before they reach the kernel: the snapshot arrives in 32 KiB
    messages, and one ``write(2)`` per message costs several times the CPU of the copy itself.
    """

    BUFFER = 1 << 20

    def __init__(self, path: Path, hashed: bool = True) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.hashed = hashed  # a copy whose bytes are hashed elsewhere need not be hashed twice
        self.sha = hashlib.sha256()
        self.size = 0
        self.buf = bytearray()
        try:
            self.fd: int | None = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise_os_error(e, self.part)

    def write(self, data: bytes | memoryview) -> int:
        assert self.fd is not None
        if self.hashed:
            self.sha.update(data)
        self.size += len(data)
        if self.buf or len(data) < self.BUFFER:
            self.buf += data
            if len(self.buf) >= self.BUFFER:
                self._flush()
        else:
            self._write_all(data)
        return len(data)

    def _flush(self) -> None:
        if self.buf:
            self._write_all(self.buf)
            self.buf = bytearray()

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        assert self.fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            raise_os_error(e, self.part)

    def finish(self) -> None:
        """Write what is buffered, fsync and close (the rename is the caller's, after verification)."""
        if self.fd is not None:
            try:
                self._flush()
                os.fsync(self.fd)
            except OSError as e:
                raise_os_error(e, self.part)
            finally:
                os.close(self.fd)
                self.fd = None

    def discard(self) -> None:
        self.buf = bytearray()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()

    def commit(self) -> None:
        os.rename(self.part, self.path)


class _QueueReader(io.RawIOBase):
    """A readable stream fed chunk by chunk from another thread (None = end)."""

    def __init__(self, q: queue.Queue[bytes | None]) -> None:
        self.q = q
        self.buf = b""
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf and not self.eof:
            item = self.q.get()
            if item is None:
                self.eof = True
            else:
                self.buf = item
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


class EncodedSink:
    """zstd and/or age encoding into a :class:`FileSink`, in a worker thread."""

    def __init__(self, path: Path, compress: bool, recipients: list[Any], file: Any = None) -> None:
        # ``file``: any FileSink-like sink (e.g. a repository upload); default a local .part file
        self.file: Any = file if file is not None else FileSink(path)
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self.error: BaseException | None = None
        self.compress = compress
        self.recipients = recipients
        self.thread = threading.Thread(target=self._run, name="etcdwarden-encode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            src: Any = io.BufferedReader(_QueueReader(self.q), buffer_size=1 << 20)
            if self.compress:
                src = zstandard.ZstdCompressor(level=3).stream_reader(src, read_size=1 << 20)
            if self.recipients:
                import pyrage

                pyrage.encrypt_io(src, _SinkWriter(self.file), self.recipients)
            else:
                while chunk := src.read(1 << 20):
                    self.file.write(chunk)
        except BaseException as e:
            self.error = e
            # drain so the producer never blocks on a dead consumer
            with contextlib.suppress(Exception):
                while self.q.get(timeout=0.1) is not None:
                    pass

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self._wrapped()
        self.q.put(data)

    def _wrapped(self) -> BaseException:
        e = self.error
        if isinstance(e, EtcdwardenError):
            return e
        return EtcdwardenError(f"encoding the snapshot failed: {e}")

    def finish(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self._wrapped()
        self.file.finish()

    def discard(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.q.put(None, timeout=1)
            self.thread.join(timeout=10)
        self.file.discard()


class _SinkWriter(io.BufferedIOBase):
    def __init__(self, sink: FileSink) -> None:
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return self.sink.write(bytes(b))


@dataclass
class StreamResult:
    db_size: int
    db_sha256: str  # hex of the database bytes (= the trailer)
    file_sha256: str  # hex of every byte received (database + trailer): what a plain snapshot file holds


class TrailerChecker:
    """Hash everything but the last 32 bytes; at the end compare them with that hash.

    It also yields the sha256 of the whole stream (:attr:`StreamResult.file_sha256`, the database
    hash continued over the trailer), so a plain snapshot file needs no second hashing pass.
    """

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.tail = b""
        self.total = 0
        self.expected: int | None = None

    def feed(self, blob: bytes, remaining: int) -> None:
        if self.expected is None:
            self.expected = remaining + len(blob)  # DB size announced by the first message
        self.total += len(blob)
        if len(blob) >= TRAILER:
            self.sha.update(self.tail)
            view = memoryview(blob)
            self.sha.update(view[:-TRAILER])
            self.tail = bytes(view[-TRAILER:])
            return
        data = self.tail + blob
        if len(data) > TRAILER:
            self.sha.update(data[:-TRAILER])
            self.tail = data[-TRAILER:]
        else:
            self.tail = data

    def result(self) -> StreamResult:
        db_size = self.total - TRAILER
        if self.total < TRAILER or self.expected is None:
            raise SnapshotStreamError("the snapshot stream ended before any data arrived")
        if db_size != self.expected:
            raise SnapshotStreamError(
                f"the snapshot stream was cut short: {db_size} database bytes received, {self.expected} announced")
        digest = self.sha.digest()
        if digest != self.tail:
            raise SnapshotStreamError(
                "the snapshot's sha256 trailer does not match the bytes received (corrupted in transit?)")
        whole = self.sha.copy()
        whole.update(self.tail)
        return StreamResult(db_size=db_size, db_sha256=digest.hex(), file_sha256=whole.hexdigest())


Progress = Callable[[int, int], None]  # (bytes received, total expected)

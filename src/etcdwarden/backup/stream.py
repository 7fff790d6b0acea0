"""Stream a ``Maintenance.Snapshot`` into repository writers while proving what was received.

The server sends the database bytes in 32 KiB chunks and, last, 32 bytes: the SHA-256 of the
database. We hash as we stream (holding back the final 32 bytes), check that trailer (etcdctl does
not), and keep it in the file so plain ``etcdutl snapshot restore`` accepts the result.

Bytes go only to :class:`~etcdwarden.repository.base.Writer` objects (``Repository.open_write``): the
object appears under its name only when the caller commits it, after every check passed; any failure
discards it. Hashing and writing run in a worker thread (:class:`StreamPipe`) and encoded output (zstd,
age) in another (:class:`EncodedSink`), each fed through a bounded queue, so the network, the hash, the
encoder and the disk overlap and memory stays flat whatever the database size.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zstandard

from etcdwarden.errors import EtcdwardenError
from etcdwarden.repository.base import Writer
from etcdwarden.snapshot.crc import crc32c

TRAILER = 32


class SnapshotStreamError(EtcdwardenError):
    """The snapshot stream was incomplete or did not match its own checksum."""


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


ZSTD_LEVEL = 1  # at level 3 compression costs 4x the CPU (1.3 s vs 0.3 s per 270 MB) for a ratio about as good


class EncodedSink:
    """zstd and/or age encoding into a repository :class:`Writer` (``file``), in a worker thread.

    ``roundtrip``: the compressed output is also decompressed as it is produced and its CRC-32C taken
    (:attr:`roundtrip`, a :class:`Crc`), which the caller compares with the CRC of the bytes received: proof
    that it decodes to them, without reading anything back (CRC-32C, computed in hardware, is about five
    times cheaper here than a second sha256 of the whole database; the received bytes' sha256 is the
    trailer check's).
    """

    def __init__(self, file: Writer, compress: bool, recipients: list[Any], roundtrip: bool = False) -> None:
        self.file = file
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=2)  # chunks of StreamPipe.BATCH bytes
        self.error: BaseException | None = None
        self.compress = compress
        self.recipients = recipients
        self.roundtrip = Crc() if roundtrip and compress and not recipients else None
        self.thread = threading.Thread(target=self._run, name="etcdwarden-encode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if self.recipients:
                src: Any = io.BufferedReader(_QueueReader(self.q), buffer_size=1 << 20)
                if self.compress:
                    src = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_reader(src, read_size=1 << 20)
                import pyrage

                pyrage.encrypt_io(src, _SinkWriter(self.file), self.recipients)
                return
            # zstd alone: chunk in, compressed blocks out to the writer (and through the round-trip decoder),
            # each block as zstd emits it: no batch-sized output is ever joined or held
            out: Any = self.file
            if self.roundtrip is not None:
                crc: Any = _CrcWriter(self.roundtrip)
                out = _Tee(self.file, zstandard.ZstdDecompressor().stream_writer(crc, closefd=False))
            enc = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(out, closefd=False)
            get = self.q.get
            while (item := get()) is not None:
                enc.write(item)
                del item
            enc.flush(zstandard.FLUSH_FRAME)  # the decoder takes every block as it is written: nothing to flush
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
        """Encode what is queued and hand it to the writer (the writer is committed by the caller)."""
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self._wrapped()
        self.file.flush()

    def commit(self) -> None:
        self.file.commit()

    def discard(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.q.put(None, timeout=1)
            self.thread.join(timeout=10)
        self.file.discard()


class Crc:
    """CRC-32C and length of what passes through it (a sink of :class:`StreamPipe`, or fed by the encoder)."""

    __slots__ = ("length", "value")

    def __init__(self) -> None:
        self.value = 0
        self.length = 0

    def __call__(self, data: bytes) -> None:
        self.value = crc32c(data, value=self.value)
        self.length += len(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Crc) and (self.value, self.length) == (other.value, other.length)

    __hash__ = None  # type: ignore[assignment]


class _CrcWriter:
    """A file-like end of the round-trip decoder: what it decodes goes into a :class:`Crc`."""

    __slots__ = ("crc",)

    def __init__(self, crc: Crc) -> None:
        self.crc = crc

    def write(self, data: bytes) -> int:
        self.crc(data)
        return len(data)


class _Tee:
    """The compressor's output, to the repository writer and to the round-trip decoder."""

    __slots__ = ("decoder", "file")

    def __init__(self, file: Writer, decoder: Any) -> None:
        self.file, self.decoder = file, decoder

    def write(self, data: bytes) -> int:
        self.file.write(data)
        self.decoder.write(data)
        return len(data)


class _SinkWriter(io.BufferedIOBase):
    def __init__(self, sink: Writer) -> None:
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


class StreamPipe:
    """The trailer check and the plain sinks of one snapshot stream, fed in a worker thread.

    :meth:`feed` (the event loop's side) only gathers the 32 KiB messages until they make :data:`BATCH`
    bytes and queues them; the worker joins a batch into one buffer, hashes it (:class:`TrailerChecker`)
    and hands it to every sink (``write`` of a :class:`Writer` or an :class:`EncodedSink`). ``hashlib``
    and ``os.write`` release the GIL, so the next messages are received and parsed while the last ones are
    hashed and written; joining first means the worker takes the GIL back twice per batch, not twice per
    message (a thread that keeps taking it back waits for the busy event loop each time). The queue is
    bounded (:data:`DEPTH` batches): memory stays flat. A failure in the worker (disk full, an upload that
    failed) is raised by the next :meth:`feed` or by :meth:`close`.
    """

    # 512 KiB, not 1 MiB: the batch being gathered, the queued ones and the one in the worker (its messages
    # and their join) are what the stream holds beyond gRPC's window; at 1 MiB the default backup's peak RSS
    # was ~4 MiB higher (65-69 vs 61-63 MiB, 1 GiB database) for no measurable gain in speed.
    BATCH = 1 << 19
    DEPTH = 2

    def __init__(self, sinks: list[Callable[[bytes], object]]) -> None:
        self.sinks = sinks
        self.checker = TrailerChecker()
        self.q: queue.Queue[tuple[list[bytes], int] | None] = queue.Queue(maxsize=self.DEPTH)
        self.batch: list[bytes] = []
        self.batch_size = 0
        self.announced: int | None = None  # the database size the first message announced
        self.error: BaseException | None = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="etcdwarden-stream", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        checker, sinks, get = self.checker, self.sinks, self.q.get
        try:
            while (item := get()) is not None:
                if self.stopped:
                    continue
                blobs, remaining = item
                data = blobs[0] if len(blobs) == 1 else b"".join(blobs)
                del item, blobs  # the messages go back to the allocator now, not after the batch is written
                checker.feed(data, remaining)
                for write in sinks:
                    write(data)
        except BaseException as e:
            self.error = e
            while get() is not None:  # drain, so the producer never blocks on a dead consumer
                pass

    def feed(self, blob: bytes, remaining: int) -> None:
        """One message of the stream (``remaining``: the bytes the server says are still to come after it)."""
        if self.error is not None:
            raise self.error
        if self.announced is None:
            self.announced = remaining + len(blob)
        self.batch.append(blob)
        self.batch_size += len(blob)
        if self.batch_size >= self.BATCH:
            self._put()

    def _put(self) -> None:
        # TrailerChecker reads the announced size from its first feed only, as remaining + len(data)
        assert self.announced is not None
        self.q.put((self.batch, self.announced - self.batch_size))
        self.batch, self.batch_size = [], 0

    def close(self) -> StreamResult:
        """Wait for the worker to write everything fed; the stream's checked result."""
        if self.batch:
            self._put()
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.checker.result()

    def abort(self) -> None:
        """Stop the worker (what is queued is dropped) and wait for it: the sinks may then be discarded."""
        self.stopped = True
        self.batch, self.batch_size = [], 0
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()

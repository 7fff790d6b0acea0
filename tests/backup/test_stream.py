"""The trailer check, the stream pipe, the local writer and the encoder, on crafted streams (the server side
is tested in test_backup.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from etcdwarden.backup.stream import Crc, EncodedSink, SnapshotStreamError, StreamPipe, TrailerChecker
from etcdwarden.fsutil import DiskFull, Locked, atomic_write, dir_lock
from etcdwarden.repository.local import LocalRepository, LocalWriter

pytestmark = pytest.mark.unit


def _feed(data: bytes, chunk: int = 1000) -> TrailerChecker:
    c = TrailerChecker()
    for i in range(0, len(data), chunk):
        blob = data[i: i + chunk]
        c.feed(blob, max(0, len(data) - 32 - i - len(blob)))
    return c


@pytest.mark.parametrize("chunk", [1, 7, 31, 32, 33, 1000, 4096])
def test_good_stream(chunk: int) -> None:
    db = os.urandom(8192)
    whole = db + hashlib.sha256(db).digest()
    r = _feed(whole, chunk).result()
    assert r.db_size == 8192 and r.db_sha256 == hashlib.sha256(db).hexdigest()
    # the hash of the whole stream is what a plain snapshot file's manifest records
    assert r.file_sha256 == hashlib.sha256(whole).hexdigest()


def test_flipped_byte_is_caught() -> None:
    db = bytearray(os.urandom(8192))
    trailer = hashlib.sha256(db).digest()
    db[100] ^= 1
    with pytest.raises(SnapshotStreamError, match="does not match"):
        _feed(bytes(db) + trailer).result()


def test_cut_short_is_caught() -> None:
    db = os.urandom(8192)
    full = db + hashlib.sha256(db).digest()
    c = TrailerChecker()
    c.feed(full[:1000], len(db) - 1000)  # announces 8192 bytes
    c.feed(full[1000:5000], 0)
    with pytest.raises(SnapshotStreamError, match="cut short"):
        c.result()


def test_empty_stream() -> None:
    with pytest.raises(SnapshotStreamError):
        TrailerChecker().result()


def test_local_writer_discard_leaves_nothing(tmp_path: Path) -> None:
    w = LocalRepository(tmp_path).open_write("x.db")
    w.write(b"abc" * 1000)
    w.flush()
    assert [p.name for p in tmp_path.iterdir()] == ["x.db.part"]
    w.discard()
    assert list(tmp_path.iterdir()) == []


def test_local_writer_buffers_small_writes_and_keeps_every_byte(tmp_path: Path) -> None:
    buf = LocalWriter.BUFFER
    data = os.urandom(3 * buf + 12345)
    w = LocalRepository(tmp_path).open_write("x.db")
    assert isinstance(w, LocalWriter) and w.part == tmp_path / "x.db.part"
    pieces = [data[i: i + 32768] for i in range(0, 2 * buf, 32768)]
    for p in pieces:
        w.write(p)
    assert w.part.stat().st_size == 2 * buf  # whole 1 MiB blocks, not one write per piece
    w.write(data[2 * buf: 3 * buf + 100])  # a large write after buffered ones
    w.write(data[3 * buf + 100:])
    assert w.part.stat().st_size < len(data)  # the tail is still buffered in memory
    w.flush()
    assert w.part.read_bytes() == data  # flush makes the .part file whole
    assert not (tmp_path / "x.db").exists()
    w.commit()
    assert (tmp_path / "x.db").read_bytes() == data and [p.name for p in tmp_path.iterdir()] == ["x.db"]
    assert (tmp_path / "x.db").stat().st_mode & 0o777 == 0o600
    assert w.size == len(data) and w.sha.hexdigest() == hashlib.sha256(data).hexdigest()


def test_unhashed_writer_does_not_hash(tmp_path: Path) -> None:
    w = LocalRepository(tmp_path).open_write("x.db")
    w.hashed = False
    w.write(b"abc")
    w.commit()
    assert w.sha.hexdigest() == hashlib.sha256().hexdigest() and w.size == 3


def test_local_writer_disk_full_is_disk_full(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.fail("/dev/full is needed")
    w = LocalRepository(tmp_path).open_write("x.db")
    assert isinstance(w, LocalWriter)
    assert w.fd is not None
    os.dup2(os.open("/dev/full", os.O_WRONLY), w.fd)  # every write now fails with ENOSPC
    with pytest.raises(DiskFull, match="no space left"):
        w.write(os.urandom(2 * LocalWriter.BUFFER))
    w.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("roundtrip", [False, True])
def test_encoded_sink_zstd_roundtrip(tmp_path: Path, roundtrip: bool) -> None:
    import zstandard

    data = os.urandom(100_000) + b"a" * 100_000
    s = EncodedSink(LocalRepository(tmp_path).open_write("x.db.zst"), True, [], roundtrip=roundtrip)
    for i in range(0, len(data), 32768):
        s.write(data[i: i + 32768])
    s.finish()
    s.commit()
    assert zstandard.ZstdDecompressor().stream_reader((tmp_path / "x.db.zst").open("rb")).read() == data
    assert s.file.sha.hexdigest() == hashlib.sha256((tmp_path / "x.db.zst").read_bytes()).hexdigest()
    received = Crc()
    received(data)
    assert s.roundtrip == (received if roundtrip else None)
    if roundtrip:  # one byte less, or one byte other, is not equal
        short, other = Crc(), Crc()
        short(data[:-1])
        other(data[:-1] + b"b")
        assert s.roundtrip not in (short, other)


class _Sink:
    def __init__(self, fail_after: int | None = None) -> None:
        self.data = bytearray()
        self.fail_after = fail_after

    def __call__(self, b: bytes) -> None:
        if self.fail_after is not None and len(self.data) >= self.fail_after:
            raise DiskFull("no space left (test)")
        self.data += b


def test_stream_pipe_hashes_and_writes_in_order() -> None:
    db = os.urandom(300_000)
    whole = db + hashlib.sha256(db).digest()
    a, b = _Sink(), _Sink()
    pipe = StreamPipe([a, b])
    for i in range(0, len(whole), 4096):
        blob = whole[i: i + 4096]
        pipe.feed(blob, max(0, len(whole) - 32 - i - len(blob)))
    r = pipe.close()
    assert bytes(a.data) == whole == bytes(b.data)
    assert r.db_size == len(db) and r.file_sha256 == hashlib.sha256(whole).hexdigest()


@pytest.mark.parametrize("size", [8192, 3 << 20])
def test_stream_pipe_batches_never_hide_a_cut_or_a_bad_trailer(size: int) -> None:
    """Batching the messages keeps the announced size of the first one: a stream cut short or with a wrong
    trailer fails, whether the whole stream fits one batch or spans several."""
    db = os.urandom(size)

    def run(data: bytes, trailer: bytes, announced: int) -> None:
        """As etcd sends it: the database in 32 KiB messages with the bytes still to come, then the trailer."""
        pipe = StreamPipe([_Sink()])
        sent = 0
        for i in range(0, len(data), 32768):
            blob = data[i: i + 32768]
            sent += len(blob)
            pipe.feed(blob, announced - sent)
        pipe.feed(trailer, 0)
        pipe.close()

    run(db, hashlib.sha256(db).digest(), size)
    with pytest.raises(SnapshotStreamError, match="cut short"):
        run(db[:-4096], hashlib.sha256(db[:-4096]).digest(), size)
    with pytest.raises(SnapshotStreamError, match="trailer"):
        run(db, bytes(32), size)


def test_stream_pipe_reports_a_sink_failure_and_aborts() -> None:
    pipe = StreamPipe([_Sink(fail_after=10_000)])
    with pytest.raises(DiskFull):
        for _ in range(10_000):  # the worker's failure surfaces in feed (or close), never a hang
            pipe.feed(b"x" * 4096, 1 << 30)
        pipe.close()
    pipe.abort()
    assert not pipe.thread.is_alive()


def test_atomic_write_and_mode(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    atomic_write(p, b"{}")
    assert p.read_bytes() == b"{}" and (p.stat().st_mode & 0o777) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_dir_lock_excludes(tmp_path: Path) -> None:
    with dir_lock(tmp_path), pytest.raises(Locked, match="wait longer for the lock"), dir_lock(tmp_path, wait=0.3):
        pass
    with dir_lock(tmp_path):
        pass  # released

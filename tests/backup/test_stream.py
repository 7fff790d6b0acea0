"""The trailer check and the sinks, on crafted streams (the server side is tested in test_backup.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from etcdwarden.backup.stream import EncodedSink, FileSink, SnapshotStreamError, TrailerChecker
from etcdwarden.fsutil import Locked, atomic_write, dir_lock

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


def test_file_sink_discard_leaves_nothing(tmp_path: Path) -> None:
    s = FileSink(tmp_path / "x.db")
    s.write(b"abc")
    s.discard()
    assert list(tmp_path.iterdir()) == []


def test_file_sink_buffers_small_writes_and_keeps_every_byte(tmp_path: Path) -> None:
    data = os.urandom(3 * FileSink.BUFFER + 12345)
    s = FileSink(tmp_path / "x.db")
    pieces = [data[i: i + 32768] for i in range(0, 2 * FileSink.BUFFER, 32768)]
    for p in pieces:
        s.write(p)
    s.write(data[2 * FileSink.BUFFER: 3 * FileSink.BUFFER + 100])  # a large write after buffered ones
    s.write(data[3 * FileSink.BUFFER + 100:])
    assert s.part.stat().st_size < len(data)  # the tail is still buffered in memory
    s.finish()
    s.commit()
    assert (tmp_path / "x.db").read_bytes() == data
    assert s.size == len(data) and s.sha.hexdigest() == hashlib.sha256(data).hexdigest()


def test_unhashed_file_sink_does_not_hash(tmp_path: Path) -> None:
    s = FileSink(tmp_path / "x.db", hashed=False)
    s.write(b"abc")
    s.finish()
    assert s.sha.hexdigest() == hashlib.sha256().hexdigest() and s.size == 3


def test_encoded_sink_zstd_roundtrip(tmp_path: Path) -> None:
    import zstandard

    data = os.urandom(100_000) + b"a" * 100_000
    s = EncodedSink(tmp_path / "x.db.zst", True, [])
    for i in range(0, len(data), 32768):
        s.write(data[i: i + 32768])
    s.finish()
    s.file.commit()
    assert zstandard.ZstdDecompressor().stream_reader((tmp_path / "x.db.zst").open("rb")).read() == data
    assert s.file.sha.hexdigest() == hashlib.sha256((tmp_path / "x.db.zst").read_bytes()).hexdigest()


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

"""A local repository's bulk writes (a backup's snapshot): past the page cache, every byte as written."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from etcdwarden.fsutil import DiskFull
from etcdwarden.repository.local import LocalRepository, LocalWriter

pytestmark = pytest.mark.unit

MIB = LocalWriter.BUFFER


def _write_all(w: LocalWriter, data: bytes, piece: int) -> None:
    for i in range(0, len(data), piece):
        w.write(data[i : i + piece])


def _bulk(tmp_path: Path) -> LocalWriter:
    w = LocalRepository(tmp_path).open_write("x.db", bulk=True)
    assert isinstance(w, LocalWriter)
    return w


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, MIB - 1, MIB, MIB + 1, 3 * MIB + 4096 * 7 + 32])
@pytest.mark.parametrize("piece", [32768, 10007, 5 * MIB])
def test_bulk_write_keeps_every_byte(tmp_path: Path, size: int, piece: int) -> None:
    data = os.urandom(size)
    w = _bulk(tmp_path)
    _write_all(w, data, piece)
    w.commit()
    assert (tmp_path / "x.db").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["x.db"]


def test_bulk_write_goes_past_the_page_cache_in_whole_blocks(tmp_path: Path) -> None:
    w = _bulk(tmp_path)
    assert w.fd is not None and w.direct is not None, "this machine's file system takes O_DIRECT"
    assert fcntl.fcntl(w.fd, fcntl.F_GETFL) & os.O_DIRECT
    data = os.urandom(2 * MIB + 100)
    _write_all(w, data, 32768)
    assert w.part.stat().st_size == 2 * MIB  # what is on disk: whole buffers, the rest held
    w.flush()  # the end (not a whole block) goes through the page cache: direct I/O is left for good
    assert w.direct is None and not fcntl.fcntl(w.fd, fcntl.F_GETFL) & os.O_DIRECT
    assert w.part.read_bytes() == data
    w.commit()
    assert (tmp_path / "x.db").read_bytes() == data


def test_a_file_system_that_refuses_direct_io_gets_the_bytes_through_the_page_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write

    def refusing(fd: int, data: bytes) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data)

    monkeypatch.setattr(os, "write", refusing)
    data = os.urandom(3 * MIB + 5)
    w = _bulk(tmp_path)
    _write_all(w, data, 65536)
    assert w.direct is None  # left at the first refusal
    w.commit()
    assert (tmp_path / "x.db").read_bytes() == data


def test_a_short_direct_write_goes_on_through_the_page_cache(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    calls: list[int] = []

    def short(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 2:  # the second buffer: half of it
            return real(fd, memoryview(data)[: len(data) // 2])
        return real(fd, data)

    monkeypatch.setattr(os, "write", short)
    data = os.urandom(4 * MIB + 77)
    w = _bulk(tmp_path)
    _write_all(w, data, 32768)
    w.commit()
    assert calls[:2] == [MIB, MIB]
    assert (tmp_path / "x.db").read_bytes() == data


def test_disk_full_on_a_direct_write_is_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    w = _bulk(tmp_path)
    with pytest.raises(DiskFull):
        _write_all(w, os.urandom(2 * MIB), 32768)
    w.discard()
    assert list(tmp_path.iterdir()) == []

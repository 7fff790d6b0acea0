"""The offline WAL reader: on a real member's WAL, and on WALs written here record by record (crc chain across
files, raft truncation, a torn tail, damage)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import crc32c
import pytest

from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.snapshot.wal import WalCorrupt, read_wal
from tests.backup.conftest import load


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _msg(*fields: tuple[int, int | bytes]) -> bytes:
    out = bytearray()
    for num, v in fields:
        if isinstance(v, bytes):
            out += _varint(num << 3 | 2) + _varint(len(v)) + v
        else:
            out += _varint(num << 3) + _varint(v)
    return bytes(out)


class Writer:
    """Writes WAL files the way etcd's encoder does (8-byte framed, padded records, running CRC-32C)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.crc = 0
        self.seq = -1
        self.buf = bytearray()

    def _frame(self, rec: bytes) -> None:
        pad = (8 - len(rec) % 8) % 8
        length = len(rec) | ((0x80 | pad) << 56 if pad else 0)
        self.buf += length.to_bytes(8, "little") + rec + b"\0" * pad

    def record(self, kind: int, data: bytes) -> None:
        self.crc = crc32c.crc32c(data, value=self.crc)
        self._frame(_msg((1, kind), (2, self.crc), (3, data)))

    def new_file(self, index: int = 0) -> None:
        self.close()
        self.seq += 1
        self.path = self.dir / f"{self.seq:016x}-{index:016x}.wal"
        self._frame(_msg((1, 4), (2, self.crc)))  # the crc record: the previous file's running crc
        self.record(1, _msg((1, 0xAB), (2, 0xCD)))

    def entry(self, index: int, term: int) -> None:
        self.record(2, _msg((2, term), (3, index), (4, b"data")))

    def state(self, term: int, commit: int) -> None:
        self.record(3, _msg((1, term), (2, 7), (3, commit)))

    def close(self, prealloc: int = 4096) -> None:
        if self.seq >= 0 and self.buf:
            self.path.write_bytes(bytes(self.buf) + b"\0" * prealloc)
            self.buf = bytearray()



@pytest.mark.unit
def test_log_across_files_with_truncation(tmp_path: Path) -> None:
    w = Writer(tmp_path / "wal")
    w.new_file()
    for i in range(1, 11):
        w.entry(i, 2)
    w.state(2, 8)
    w.new_file(11)
    w.entry(9, 3)  # a new leader rewrote the log from index 9 (entries 9 and 10 of term 2 are gone)
    w.entry(10, 3)
    w.entry(11, 3)
    w.state(3, 10)
    w.close()
    st = read_wal(tmp_path / "wal")
    assert len(st.files) == 2 and st.member_id == 0xAB and st.cluster_id == 0xCD
    assert (st.last_index, st.last_term) == (11, 3)
    assert (st.commit, st.commit_term, st.hard_term) == (10, 3, 3)
    assert st.committed == (3, 10) and st.term_at(8) == 2 and st.tail is None


@pytest.mark.unit
def test_torn_tail_ends_the_log_and_damage_before_it_is_corruption(tmp_path: Path) -> None:
    w = Writer(tmp_path / "wal")
    w.new_file()
    for i in range(1, 6):
        w.entry(i, 1)
    w.state(1, 5)
    w.entry(6, 1)
    w.close(prealloc=0)
    data = bytearray(w.path.read_bytes())
    whole = read_wal(tmp_path / "wal")
    assert whole.last_index == 6 and whole.tail is None
    w.path.write_bytes(bytes(data[:-5]))  # the last record cut short
    st = read_wal(tmp_path / "wal")
    assert st.last_index == 5 and st.commit == 5 and st.tail and "torn" in st.tail
    bad = bytearray(data)
    bad[34] ^= 0xFF  # a flipped byte inside the metadata record's data (bytes 24..40)
    w.path.write_bytes(bytes(bad))
    with pytest.raises(WalCorrupt, match="CRC mismatch"):
        read_wal(tmp_path / "wal")
    bad = bytearray(data)
    bad[46] ^= 0x7F  # the next record's length now runs past the file: etcd repairs (cuts) the log there
    w.path.write_bytes(bytes(bad))
    st = read_wal(tmp_path / "wal")
    assert st.last_index == 0 and st.tail and "cut short" in st.tail


@pytest.mark.unit
def test_a_missing_file_in_the_sequence_is_corruption(tmp_path: Path) -> None:
    w = Writer(tmp_path / "wal")
    w.new_file()
    w.entry(1, 1)
    w.new_file(2)
    w.entry(2, 1)
    w.new_file(3)
    w.entry(3, 1)
    w.close()
    assert read_wal(tmp_path / "wal").last_index == 3
    next((tmp_path / "wal").glob("0000000000000001-*.wal")).unlink()
    with pytest.raises(WalCorrupt, match="not in sequence"):
        read_wal(tmp_path / "wal")
    with pytest.raises(FileNotFoundError):
        read_wal(tmp_path / "nowhere")


def test_real_member_wal(etcd1: LocalCluster) -> None:
    load(etcd1, 50, value_size=32)

    async def status() -> tuple[int, int, int, int]:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            st = await c.status(c.endpoint(etcd1.endpoints[0]))
            return int(st.raftIndex), int(st.raftTerm), int(st.header.member_id), int(st.header.cluster_id)

    index, term, member_id, cluster_id = asyncio.run(status())
    m = etcd1.members[0]
    live = read_wal(m.data_dir / "member" / "wal")  # read while etcd runs: as far as it got
    assert live.last_index <= index
    etcd1.stop()
    st = read_wal(m.data_dir / "member" / "wal")
    assert (st.commit, st.commit_term) == (index, term)
    assert (st.last_index, st.last_term) == (index, term)
    assert (st.member_id, st.cluster_id) == (member_id, cluster_id)

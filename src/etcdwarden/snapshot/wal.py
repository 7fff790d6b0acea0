"""Read an etcd write-ahead log offline (``member/wal/*.wal``): where a member's raft log ends.

Used to tell which surviving member of a cluster that lost quorum is the most advanced: the bbolt
backend (``member/snap/db``) holds what was *applied* (``meta/consistent_index``); the WAL holds what was
*logged* and the HardState (term, vote, commit). ``--force-new-cluster`` keeps the entries up to the
HardState's commit index and discards the rest, so the commit index and the term of the entry there is
what a member brings to a recovery.

Format (etcd ``server/storage/wal``, etcd-internals.md §4.2 "WAL framing"): files ``%016x-%016x.wal``
(sequence, first index), read in sequence order as one stream of records. A record is an 8-byte
little-endian length field (low 56 bits: the record's size; when the top bit is set, the low 3 bits of
the top byte are padding bytes after it) followed by a protobuf ``walpb.Record{1 type, 2 crc, 3 data}``.
Types: 1 metadata (``Metadata{1 NodeID, 2 ClusterID}``), 2 entry (``raftpb.Entry{1 Type, 2 Term,
3 Index, 4 Data}``), 3 state (``HardState{1 term, 2 vote, 3 commit}``), 4 crc (resets the running
CRC-32C to the record's ``crc``, which must equal the running value when that is not 0), 5 snapshot
(``walpb.Snapshot{1 index, 2 term}``). Every other record's ``crc`` is the running CRC-32C over all
``data`` so far. A length field of 0 is the preallocated end of a file.

Reading is read-only and safe on a live member's WAL: a record cut short at the end of the last file
(a torn write, or etcd appending while we read) ends the log there, as etcd's own read mode does. A
later entry with an index already seen replaces the log from that index on (raft truncation), as etcd
does. A CRC mismatch or an undecodable record anywhere else is corruption.
"""

from __future__ import annotations

import itertools
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.snapshot.errors import SnapshotCorrupt

METADATA, ENTRY, STATE, CRC, SNAPSHOT = 1, 2, 3, 4, 5
WAL_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_SECTOR = 512
_SIZE_MASK = (1 << 56) - 1


class WalCorrupt(SnapshotCorrupt):
    """A WAL that cannot be read to its end: a CRC mismatch or a damaged record before the tail."""


def _crc32c(data: bytes, value: int) -> int:
    from etcdwarden.snapshot.crc import crc32c

    return crc32c(data, value=value)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> dict[int, Any]:
    """The fields of a protobuf message (last value wins): ints for varints and fixed, bytes for the rest."""
    out: dict[int, Any] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        if wire == 0:
            out[num], pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            out[num] = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            out[num] = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated bytes field")
            out[num] = bytes(buf[pos:pos + n])
            pos += n
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


@dataclass
class WalState:
    """Where a WAL's raft log ends (every index and term as etcd would read it back)."""

    directory: str
    files: list[str] = field(default_factory=list)
    member_id: int | None = None
    cluster_id: int | None = None
    last_index: int = 0  # the last entry in the log (committed or not)
    last_term: int = 0
    hard_term: int = 0  # the HardState: current term, vote, commit index
    vote: int = 0
    commit: int = 0
    commit_term: int | None = None  # the term of the entry at the commit index (None: not in this WAL)
    snapshot_index: int = 0  # the newest raft snapshot recorded in the WAL
    snapshot_term: int = 0
    entries: int = 0  # entry records read
    tail: str | None = None  # how the log ended when not cleanly (a torn last record)
    _runs: list[list[int]] = field(default_factory=list, repr=False)  # [first index, term] runs of the log

    @property
    def committed(self) -> tuple[int, int]:
        """``(term, index)`` of the newest committed entry: what ``--force-new-cluster`` keeps."""
        term = self.commit_term if self.commit_term is not None else 0
        return term, self.commit

    def as_json(self) -> dict[str, Any]:
        return {"directory": self.directory, "files": self.files,
                "member_id": f"{self.member_id:x}" if self.member_id is not None else None,
                "cluster_id": f"{self.cluster_id:x}" if self.cluster_id is not None else None,
                "last_index": self.last_index, "last_term": self.last_term, "term": self.hard_term,
                "commit": self.commit, "commit_term": self.commit_term, "snapshot_index": self.snapshot_index,
                "snapshot_term": self.snapshot_term, "tail": self.tail}

    # -- the log as runs of equal terms (raft terms never decrease along the log) -------------------
    def _append(self, index: int, term: int) -> None:
        runs = self._runs
        if runs and index > self.last_index + 1:
            runs.clear()  # a gap: what came before cannot be continued
        while runs and runs[-1][0] >= index:
            runs.pop()  # a rewrite from ``index`` on (raft truncation)
        if not runs or runs[-1][1] != term:
            runs.append([index, term])
        self.last_index, self.last_term = index, term

    def term_at(self, index: int) -> int | None:
        if not self._runs or index < self._runs[0][0] or index > self.last_index:
            return self.snapshot_term if index == self.snapshot_index and index else None
        term = None
        for first, t in self._runs:
            if first > index:
                break
            term = t
        return term


def wal_files(directory: Path) -> list[Path]:
    """The WAL files of ``directory`` in sequence order (``.tmp`` files of the preallocator are not WAL)."""
    try:
        names = sorted(n for n in os.listdir(directory) if WAL_NAME.match(n))
    except FileNotFoundError:
        return []
    return [directory / n for n in names]


def read_wal(directory: str | os.PathLike[str]) -> WalState:
    """Read every record of the WAL in ``directory``; raise :class:`WalCorrupt` on damage before its tail.

    An empty or absent directory raises :class:`FileNotFoundError`.
    """
    d = Path(directory)
    files = wal_files(d)
    if not files:
        raise FileNotFoundError(f"{d}: no WAL file (%016x-%016x.wal)")
    st = WalState(str(d), [f.name for f in files])
    seqs = [int(WAL_NAME.match(f.name).group(1), 16) for f in files]  # type: ignore[union-attr]
    for a, b in itertools.pairwise(seqs):
        if b != a + 1:
            raise WalCorrupt(f"{d}: WAL files are not in sequence ({a:x} then {b:x}): a file is missing")
    crc = 0
    for i, f in enumerate(files):
        crc = _read_file(f, st, crc, last=i == len(files) - 1)
        if st.tail is not None:
            break
    st.commit_term = st.term_at(st.commit) if st.commit else 0
    return st


def _torn(mm: Any, start: int, end: int) -> bool:
    """etcd's torn-write test: some 512-byte sector of the record's bytes is all zero."""
    pos = start
    while pos < end:
        stop = min(end, (pos // _SECTOR + 1) * _SECTOR)
        if not any(mm[pos:stop]):
            return True
        pos = stop
    return False


def _read_file(path: Path, st: WalState, crc: int, last: bool) -> int:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return crc
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
    try:
        off = 0
        while off + 8 <= size:
            raw = int.from_bytes(mm[off:off + 8], "little", signed=True)
            if raw == 0:
                break  # the preallocated, never written rest of the file
            n = raw & _SIZE_MASK
            pad = (raw >> 56) & 0x7 if raw < 0 else 0
            where = f"{path} at offset {off}"
            end = off + 8 + n + pad
            if end > size:
                if last:
                    st.tail = f"the last record ({where}) is cut short: a torn write, ignored as etcd does"
                    return crc
                raise WalCorrupt(f"{where}: a record of {n} bytes runs past the end of the file")
            data = mm[off + 8:off + 8 + n]
            try:
                rec = fields(data)
            except ValueError as e:
                if last and _torn(mm, off + 8, end):
                    st.tail = f"the last record ({where}) is torn (zeroed sectors), ignored as etcd does"
                    return crc
                raise WalCorrupt(f"{where}: not a WAL record: {e}") from None
            crc = _record(rec, st, crc, where, lambda a=off + 8, b=end: last and _torn(mm, a, b))
            if st.tail is not None:
                return crc
            off = end
        return crc
    finally:
        mm.close()


def _record(rec: dict[int, Any], st: WalState, crc: int, where: str, torn: Any) -> int:
    kind = int(rec.get(1, 0))
    data = rec.get(3, b"")
    if not isinstance(data, bytes):
        raise WalCorrupt(f"{where}: the record's data is not bytes")
    want = int(rec.get(2, 0))
    if kind == CRC:
        if crc not in (0, want):
            raise WalCorrupt(f"{where}: CRC record {want:08x} does not continue the previous file's {crc:08x}")
        return want
    crc = _crc32c(data, crc)
    if want != crc:
        if torn():
            st.tail = f"the last record ({where}) is torn (zeroed sectors), ignored as etcd does"
            return crc
        raise WalCorrupt(f"{where}: CRC mismatch (record {want:08x}, computed {crc:08x}): the WAL is damaged")
    try:
        msg = fields(data)
    except ValueError as e:
        raise WalCorrupt(f"{where}: record of type {kind} does not decode: {e}") from None
    if kind == ENTRY:
        st.entries += 1
        st._append(int(msg.get(3, 0)), int(msg.get(2, 0)))
    elif kind == STATE:
        st.hard_term, st.vote, st.commit = int(msg.get(1, 0)), int(msg.get(2, 0)), int(msg.get(3, 0))
    elif kind == SNAPSHOT:
        index, term = int(msg.get(1, 0)), int(msg.get(2, 0))
        if index >= st.snapshot_index:
            st.snapshot_index, st.snapshot_term = index, term
        if index > st.last_index:
            st._runs.clear()  # the log goes on from the snapshot
            st.last_index, st.last_term = index, term
    elif kind == METADATA:
        st.member_id, st.cluster_id = int(msg.get(1, 0)) or None, int(msg.get(2, 0)) or None
    else:
        raise WalCorrupt(f"{where}: unknown record type {kind}")
    return crc

"""``snapshot status``: hash, revision, totalKey and totalSize exactly like ``etcdutl snapshot status`` 3.5.

Algorithm (etcdutl 3.5 ``snapshot.Status``; ``etcd-internals.md`` §3): CRC-32C over, for every top-level
bucket in name order, the bucket name and then every key and value in key order; ``revision`` is the
main revision of the last key of the ``key`` bucket; ``totalKey`` counts every key/value pair in every
bucket (tombstones and etcd's own bookkeeping included, as 3.4/3.5 do); ``totalSize`` is
``meta.pgid * pageSize``. The file is streamed page by page: memory does not grow with its size.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from etcdwarden.snapshot.bbolt import BoltFile, BucketRef, Leaf, Walk
from etcdwarden.snapshot.crc import crc32c
from etcdwarden.snapshot.errors import SnapshotCorrupt

KEY_BUCKET = b"key"
META_BUCKET = b"meta"
FINISHED_COMPACT = b"finishedCompactRev"
_INT64 = struct.Struct(">q")


@dataclass(frozen=True)
class SnapshotStatus:
    """The four figures of ``etcdutl snapshot status`` (3.5 semantics)."""

    hash: int
    revision: int
    total_key: int
    total_size: int
    compact_revision: int = 0  # the meta bucket's finishedCompactRev (not one of etcdutl's figures)

    @property
    def store_revision(self) -> int:
        """The store's revision at the snapshot, as etcd restores it: the last key's, or the compaction's when
        that is later (a compaction removes the tombstones of trailing deletes, not their revisions)."""
        return max(self.revision, self.compact_revision)

    def as_json(self) -> dict[str, int]:
        """The exact object ``etcdutl snapshot status -w json`` prints."""
        return {"hash": self.hash, "revision": self.revision, "totalKey": self.total_key,
                "totalSize": self.total_size}


LeafVisitor = Callable[[BucketRef, Leaf], None]


def scan(db: BoltFile, visit: LeafVisitor | None = None) -> tuple[SnapshotStatus, Walk]:
    """Walk every bucket once, computing the status; ``visit`` sees each leaf (for deeper checks)."""
    walk = db.walk()
    h = 0
    total = 0
    last: Leaf | None = None  # the key bucket's last leaf (its last key is the revision)
    compacted = 0
    mapped = memoryview(db.mapped)  # one view for every page: CRCs read the mapped file in place
    try:
        for bucket in walk.buckets():
            h = crc32c(bucket.name, value=h)
            is_key = bucket.name == KEY_BUCKET
            is_meta = bucket.name == META_BUCKET
            for leaf in walk.leaves(bucket):
                entries = leaf.entries
                if not entries:
                    continue
                buf = leaf.buf
                view = mapped if buf is db.mapped else memoryview(buf)
                if leaf.contiguous and not leaf.has_subbuckets:
                    h = crc32c(view[entries[0][1] : entries[-1][3]], value=h)
                else:
                    for flags, ks, ke, ve in entries:
                        # bbolt's ForEach gives a nil value for a nested bucket: only its name is hashed
                        h = crc32c(view[ks : (ke if flags else ve)], value=h)
                total += len(entries)
                if is_key:
                    last = leaf
                elif is_meta:
                    for key, value, _flags in leaf.items():
                        if key == FINISHED_COMPACT and len(value) >= 8:
                            compacted = _INT64.unpack_from(value)[0]
                if visit is not None:
                    visit(bucket, leaf)
    finally:
        mapped.release()
    revision = 0
    if last is not None:
        _flags, ks, ke, _ve = last.entries[-1]
        last_key = last.buf[ks:ke]
        if len(last_key) < 8:
            raise SnapshotCorrupt(f"key bucket: key {last_key!r} is not a revision")
        revision = _INT64.unpack_from(last_key)[0]
    return SnapshotStatus(h, revision, total, db.size, compacted), walk


def db_status(path: str | os.PathLike[str]) -> SnapshotStatus:
    """Status of a plain bbolt file (snapshot with or without sha256 trailer, or ``member/snap/db``)."""
    with BoltFile(path) as db:
        status, _ = scan(db)
        return status


def snapshot_status(path: str | os.PathLike[str], identity: str | os.PathLike[str] | None = None) -> SnapshotStatus:
    """Status of any snapshot input (``.db``, ``.db.zst``, ``.age``), see :mod:`.source`."""
    from etcdwarden.snapshot.source import open_snapshot

    with open_snapshot(path, identity=identity) as plain:
        return db_status(plain)


def iter_bucket(db: BoltFile, name: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of one top-level bucket in key order (empty if there is no such bucket)."""
    walk = db.walk()
    for bucket in walk.buckets():
        if bucket.name == name:
            for key, value, _flags in walk.items(bucket):
                yield key, value
            return

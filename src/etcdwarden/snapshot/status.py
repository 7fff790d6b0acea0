"""``snapshot status``: hash, revision, totalKey and totalSize exactly like ``etcdutl snapshot status`` 3.5.

Algorithm (etcdutl 3.5 ``snapshot.Status``; ``etcd-internals.md`` §3): CRC-32C over, for every top-level
bucket in name order, the bucket name and then every key and value in key order; ``revision`` is the
main revision of the last key of the ``key`` bucket; ``totalKey`` counts every key/value pair in every
bucket (tombstones and etcd's own bookkeeping included, as 3.4/3.5 do); ``totalSize`` is
``meta.pgid * pageSize``. The file is streamed page by page: memory does not grow with its size.

The walk is pure Python; the ``key`` bucket of a large database may be walked by several processes, each
hashing a group of the subtrees under the bucket's root from zero, the CRCs then joined in key order
(:func:`.crc.combine`; :mod:`.parallel` keeps the checks those of one walk).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from etcdwarden.snapshot.bbolt import BoltFile, BucketRef, Leaf, Walk, bucket_label
from etcdwarden.snapshot.crc import combine, crc32c
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

#: a database smaller than this is walked in one process (a worker costs a fork and a few milliseconds)
PARALLEL_MIN_BYTES = 64 << 20


def scan(db: BoltFile, visit: LeafVisitor | None = None, workers: int = 1) -> tuple[SnapshotStatus, Walk]:
    """Walk every bucket once, computing the status; ``visit`` sees each leaf (for deeper checks).

    ``workers`` > 1 lets the ``key`` bucket of a large database be walked by that many processes
    (:mod:`.parallel`; only without ``visit``, and only from a process that runs no other thread)."""
    walk = db.walk()
    h = 0
    total = 0
    last_key: bytes | None = None  # the key bucket's last key: the revision
    compacted: list[int] = []
    mapped = memoryview(db.mapped)  # one view for every page: CRCs read the mapped file in place
    try:
        for bucket in walk.buckets():
            h = crc32c(bucket.name, value=h)
            if bucket.name == KEY_BUCKET and bucket.root and visit is None and workers > 1 \
                    and db.size >= PARALLEL_MIN_BYTES:
                h, n, last_key = _hash_split(walk, bucket, workers, h)
                total += n
                continue
            leaves = walk.leaves(bucket)
            if visit is not None:
                leaves = _visiting(leaves, bucket, visit)
            if bucket.name == META_BUCKET:
                leaves = _compaction(leaves, compacted)
            h, _length, n, _first, last = _hash_leaves(leaves, db.mapped, mapped, h)
            total += n
            if bucket.name == KEY_BUCKET:
                last_key = last
    finally:
        mapped.release()
    revision = 0
    if last_key is not None:
        if len(last_key) < 8:
            raise SnapshotCorrupt(f"key bucket: key {last_key!r} is not a revision")
        revision = _INT64.unpack_from(last_key)[0]
    return SnapshotStatus(h, revision, total, db.size, compacted[-1] if compacted else 0), walk


def _hash_leaves(leaves: Iterator[Leaf], mm: object, view: memoryview,
                 h: int) -> tuple[int, int, int, bytes | None, bytes | None]:
    """Feed the leaves' keys and values to the CRC as etcdutl does (a nested bucket: its name only):
    ``(crc continued from h, bytes fed, entries, first key, last key)``."""
    length = total = 0
    first: Leaf | None = None
    last: Leaf | None = None
    for leaf in leaves:
        entries = leaf.entries
        if not entries:
            continue
        buf = leaf.buf
        v = view if buf is mm else memoryview(buf)
        if leaf.contiguous and not leaf.has_subbuckets:
            start, end = entries[0][1], entries[-1][3]
            h = crc32c(v[start:end], value=h)
            length += end - start
        else:
            for flags, ks, ke, ve in entries:
                end = ke if flags else ve
                h = crc32c(v[ks:end], value=h)
                length += end - ks
        total += len(entries)
        if first is None:
            first = leaf
        last = leaf
    return h, length, total, _key(first, 0), _key(last, -1)


def _key(leaf: Leaf | None, i: int) -> bytes | None:
    if leaf is None:
        return None
    _flags, ks, ke, _ve = leaf.entries[i]
    return bytes(leaf.buf[ks:ke])


def _visiting(leaves: Iterator[Leaf], bucket: BucketRef, visit: LeafVisitor) -> Iterator[Leaf]:
    for leaf in leaves:
        visit(bucket, leaf)
        yield leaf


def _compaction(leaves: Iterator[Leaf], found: list[int]) -> Iterator[Leaf]:
    """The meta bucket's leaves, noting its ``finishedCompactRev`` in ``found``."""
    for leaf in leaves:
        for key, value, _flags in leaf.items():
            if key == FINISHED_COMPACT and len(value) >= 8:
                found.append(_INT64.unpack_from(value)[0])
        yield leaf


def _hash_split(walk: Walk, bucket: BucketRef, workers: int, h: int) -> tuple[int, int, bytes | None]:
    """The key bucket hashed in groups of the subtrees under its root page (:mod:`.parallel`):
    ``(crc continued from h, entries, last key)``."""
    from etcdwarden.snapshot import parallel

    where = bucket_label(bucket)
    children = walk.branch_children(bucket.root, where)
    if children is None:  # the root page is a leaf: nothing to split
        with memoryview(walk.db.mapped) as view:
            h, _length, n, _first, only = _hash_leaves(walk.leaves(bucket), walk.db.mapped, view, h)
        return h, n, only
    starts: parallel.Starts = [(child, key) for key, child in children]

    def work(w: Walk, group: parallel.Starts) -> tuple[int, int, int, bytes | None, bytes | None]:
        with memoryview(w.db.mapped) as view:
            return _hash_leaves(w.leaves_below(group, where), w.db.mapped, view, 0)

    parts = parallel.run_groups(walk, parallel.split(starts, workers), work, where)
    total = 0
    last: bytes | None = None
    for crc, length, n, first, part_last in parts:
        if last is not None and first is not None and first <= last:
            raise SnapshotCorrupt(f"{where}: keys out of order across pages (key {first!r} after {last!r})")
        h = combine(h, crc, length)
        total += n
        if part_last is not None:
            last = part_last
    return h, total, last


def db_status(path: str | os.PathLike[str], workers: int = 1) -> SnapshotStatus:
    """Status of a plain bbolt file (snapshot with or without sha256 trailer, or ``member/snap/db``);
    ``workers``: see :func:`scan`."""
    with BoltFile(path) as db:
        status, _ = scan(db, workers=workers)
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

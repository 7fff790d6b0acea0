"""A read-only reader of bbolt database files (the etcd backend and its snapshots).

Why hand-written: there is no maintained Python reader of the bbolt (BoltDB) file format, and the
only alternatives are shelling out to Go tools (``etcdutl``, ``bbolt``) — exactly the dependency the
offline snapshot tools must not have — or loading the whole file into memory. The format is small and
stable (file format version 2, unchanged from bbolt 1.3 to 1.4), see ``etcd-internals.md`` §2.

Design:

* The file is memory-mapped read-only and processed one page (plus its overflow pages) at a time;
  nothing ever holds the whole file. The pages touched are dropped from the process's resident set
  (``madvise(MADV_DONTNEED)``) every :data:`RSS_BUDGET` bytes, so the resident size does not grow with
  the database (the data stays in the page cache).
* A snapshot written by ``etcdctl snapshot save`` ends with a 32-byte SHA-256 trailer: present iff
  ``size % 512 == 32``. bbolt only reads ``meta.pgid * pageSize`` bytes; a file shorter than that is
  truncated and reported as such.
* Meta pages: magic, version, FNV-1a 64 checksum (required to match, as bbolt >= 1.3.7), page header,
  and sanity of page size / root / pgid. The valid meta with the higher txid wins (bbolt ``db.meta()``).
* Every page walk checks: page id inside ``[2, meta.pgid)`` including its overflow pages, the header
  id equals the requested id, no page (overflow pages included) is reached twice, flags are branch or
  leaf, element arrays and keys/values lie inside the page, keys are non-empty and strictly ascending
  across the whole bucket, and each child's keys are not below its branch key. Each page is visited at
  most once per :class:`Walk`, so every loop is bounded by ``meta.pgid``: a corrupt file cannot hang.

Every problem raises :class:`~etcdwarden.snapshot.errors.SnapshotCorrupt`.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError

MAGIC = 0xED0CDAED
VERSION = 2
TRAILER_SIZE = 32
BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01
NO_FREELIST = 0xFFFFFFFFFFFFFFFF
RSS_BUDGET = 1024 * 1024  # mapped pages dropped after each MiB walked (madvise costs what it drops, not more)

_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQQ")  # magic version pageSize flags root sequence freelist pgid txid checksum
_BUCKET_HEADER = struct.Struct("<QQ")  # root, sequence
_LEAF_ELEM = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BRANCH_ELEM = struct.Struct("<IIQ")  # pos, ksize, pgid
_HDR = 16
_ELEM = 16
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit hash (bbolt's meta checksum)."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    return h


def has_trailer(file_size: int) -> bool:
    """Whether a file of this size carries the 32-byte sha256 trailer of ``snapshot save``."""
    return file_size % 512 == TRAILER_SIZE


@dataclass(frozen=True)
class Meta:
    """One meta page, as read, with the reason it is unusable (``problem``) or ``None``."""

    page: int
    magic: int
    version: int
    page_size: int
    flags: int
    root: int
    sequence: int
    freelist: int
    pgid: int
    txid: int
    checksum: int
    problem: str | None

    @property
    def valid(self) -> bool:
        return self.problem is None


def _read_meta(buf: mmap.mmap, limit: int, page: int, offset: int) -> Meta | None:
    if offset + _HDR + _META.size > limit:
        return None
    pid, pflags, _count, _overflow = _PAGE_HEADER.unpack_from(buf, offset)
    fields = _META.unpack_from(buf, offset + _HDR)
    magic, version, page_size, _flags, root, _seq, freelist, pgid, _txid, checksum = fields
    raw = buf[offset + _HDR : offset + _HDR + _META.size - 8]
    problem: str | None = None
    if magic != MAGIC:
        problem = f"bad magic 0x{magic:08x}" + (" (big-endian file?)" if magic == 0xEDDA0CED else "")
    elif version != VERSION:
        problem = f"unsupported version {version}"
    elif checksum != fnv1a64(raw):
        problem = "checksum mismatch"
    elif pid != page or not pflags & META_PAGE:
        problem = f"bad page header (id {pid}, flags 0x{pflags:x})"
    elif page_size < 512 or page_size > 1 << 20 or page_size & (page_size - 1):
        problem = f"invalid page size {page_size}"
    elif pgid < 3 or not 2 <= root < pgid:
        problem = f"invalid root page {root} or high-water mark {pgid}"
    elif freelist != NO_FREELIST and not 2 <= freelist < pgid:
        problem = f"invalid freelist page {freelist}"
    return Meta(page, magic, version, page_size, _flags, root, _seq, freelist, pgid, _txid, checksum, problem)


@dataclass(frozen=True)
class BucketRef:
    """A bucket: a root page id, or (root == 0) an inline page image held in ``inline``."""

    name: bytes
    root: int
    inline: bytes


class Leaf:
    """One leaf page: ``entries`` are ``(flags, key_start, key_end, value_end)`` offsets into ``buf``.

    ``buf`` is the whole memory-mapped file (offsets are absolute: nothing is copied to parse a page) or,
    for an inline bucket, the bucket's value. ``contiguous`` says the key/value bytes of all entries form
    one run ``k0 v0 k1 v1 ...`` from ``entries[0][1]`` to ``entries[-1][3]`` (how bbolt writes pages), which
    lets CRCs be fed in one call.
    """

    __slots__ = ("buf", "contiguous", "entries", "has_subbuckets")

    def __init__(self, buf: bytes | mmap.mmap, entries: list[tuple[int, int, int, int]], contiguous: bool,
                 has_subbuckets: bool) -> None:
        self.buf = buf
        self.entries = entries
        self.contiguous = contiguous
        self.has_subbuckets = has_subbuckets

    def items(self) -> Iterator[tuple[bytes, bytes, int]]:
        """``(key, value, flags)`` of each entry."""
        buf = self.buf
        for flags, ks, ke, ve in self.entries:
            yield buf[ks:ke], buf[ke:ve], flags


class BoltFile:
    """An open bbolt file. Use as a context manager; :meth:`walk` starts a checked traversal."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError as e:
            raise SnapshotInputError(f"{self.path}: no such file") from e
        except IsADirectoryError as e:
            raise SnapshotInputError(f"{self.path} is a directory, not a snapshot file") from e
        except OSError as e:
            raise SnapshotInputError(f"cannot open {self.path}: {e.strerror}") from e
        try:
            self.file_size = os.fstat(fd).st_size
            if self.file_size < 2 * 1024:
                raise SnapshotCorrupt(f"{self.path}: {self.file_size} bytes is too small for a bbolt database")
            self._mm = mmap.mmap(fd, self.file_size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        try:
            self._open()
        except BaseException:
            self._mm.close()
            raise
        self._touched = 0

    def _open(self) -> None:
        self.has_trailer = has_trailer(self.file_size)
        self.data_size = self.file_size - TRAILER_SIZE if self.has_trailer else self.file_size
        mm, limit = self._mm, self.data_size
        m0 = _read_meta(mm, limit, 0, 0)
        page_size = 4096
        if m0 is not None and m0.valid:
            page_size = m0.page_size
        else:  # find meta 1 by probing page sizes (bbolt >= 1.3.7)
            for i in range(15):
                probe = _read_meta(mm, limit, 1, 1024 << i)
                if probe is not None and probe.valid and probe.page_size == 1024 << i:
                    page_size = probe.page_size
                    break
        m1 = _read_meta(mm, limit, 1, page_size)
        self.metas: tuple[Meta | None, Meta | None] = (m0, m1)
        candidates = sorted((m for m in self.metas if m is not None), key=lambda m: m.txid, reverse=True)
        chosen = next((m for m in candidates if m.valid), None)
        if chosen is None:
            reasons = "; ".join(
                f"meta page {i}: {m.problem if m is not None else 'missing'}" for i, m in enumerate(self.metas)
            )
            raise SnapshotCorrupt(f"{self.path}: no valid meta page ({reasons})")
        self.meta = chosen
        self.page_size = chosen.page_size
        self.size = chosen.pgid * chosen.page_size
        if self.size > self.data_size:
            raise SnapshotCorrupt(
                f"{self.path}: truncated: the database needs {self.size} bytes "
                f"({chosen.pgid} pages of {chosen.page_size}) but the file holds {self.data_size}"
                + (" before the sha256 trailer" if self.has_trailer else "")
            )

    def meta_problems(self) -> list[str]:
        """A message for each meta page that does not validate (empty when both are good)."""
        out = []
        for i, m in enumerate(self.metas):
            if m is None:
                out.append(f"meta page {i} is missing")
            elif m.problem is not None:
                out.append(f"meta page {i} is invalid: {m.problem}")
        return out

    def close(self) -> None:
        self._mm.close()

    def __enter__(self) -> BoltFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def mapped(self) -> mmap.mmap:
        """The file, memory-mapped read-only (what :attr:`Leaf.buf` is for every page of the file)."""
        return self._mm

    def walk(self) -> Walk:
        """A new traversal; each page may be reached at most once within it."""
        return Walk(self)

    def read_trailer(self) -> bytes | None:
        return self._mm[self.file_size - TRAILER_SIZE :] if self.has_trailer else None

    # -- page access (used by Walk) ---------------------------------------------------------
    def _release(self) -> None:
        self._touched = 0
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)


def _corrupt(where: str, what: str) -> SnapshotCorrupt:
    return SnapshotCorrupt(f"{where}: {what}")


class Walk:
    """One checked traversal of a :class:`BoltFile` (owns the visited-page bitmap)."""

    def __init__(self, db: BoltFile) -> None:
        self.db = db
        self._visited = bytearray((db.meta.pgid >> 3) + 1)
        self.pages = 0
        self.branch_pages = 0

    def _page(self, pgid: int, where: str) -> tuple[int, int, int, int]:
        """Page ``pgid`` (with its overflow pages) after the bounds / id / revisit / flags checks:
        ``(start, end, flags, count)``, the page's byte range in the mapped file and its header fields."""
        db = self.db
        high = db.meta.pgid
        if not 2 <= pgid < high:
            raise _corrupt(where, f"page {pgid} is outside the database (high-water mark {high})")
        start = pgid * db.page_size
        pid, flags, count, overflow = _PAGE_HEADER.unpack_from(db._mm, start)
        if pid != pgid:
            raise _corrupt(where, f"page {pgid} has id {pid} in its header")
        seen = self._visited
        if overflow == 0:
            bit = 1 << (pgid & 7)
            if seen[pgid >> 3] & bit:
                raise _corrupt(where, f"page {pgid} is reachable twice")
            seen[pgid >> 3] |= bit
        else:
            if pgid + overflow >= high:
                raise _corrupt(where, f"page {pgid} overflows ({overflow} pages) past the high-water mark {high}")
            for p in range(pgid, pgid + overflow + 1):
                bit = 1 << (p & 7)
                if seen[p >> 3] & bit:
                    raise _corrupt(where, f"page {p} is reachable twice")
                seen[p >> 3] |= bit
        self.pages += overflow + 1
        if flags != LEAF_PAGE and flags != BRANCH_PAGE:  # noqa: PLR1714 - hot path
            raise _corrupt(where, f"page {pgid} has flags 0x{flags:x}, expected a branch or leaf page")
        n = (overflow + 1) * db.page_size
        db._touched += n
        if db._touched > RSS_BUDGET:
            db._release()
        return start, start + n, flags, count

    def buckets(self) -> Iterator[BucketRef]:
        """The top-level buckets in name order (the root bucket's entries)."""
        for leaf in self.leaves_of(self.db.meta.root, "root bucket"):
            for name, value, flags in leaf.items():
                where = f"bucket {name!r}"
                if not flags & BUCKET_LEAF_FLAG:
                    raise _corrupt("root bucket", f"entry {name!r} is not a bucket")
                yield bucket_ref(name, value, where)

    def visited(self) -> bytes:
        """The pages reached so far (bit ``p`` of byte ``p >> 3``)."""
        return bytes(self._visited)

    def absorb(self, visited: bytes, since: bytes, pages: int, branch_pages: int, where: str) -> None:
        """Count as walked here the pages another walk of the same file reached (``visited``) that were not
        reached when it started from this walk's state ``since``; a page both reached is corrupt."""
        base = int.from_bytes(since, "little")
        theirs = int.from_bytes(visited, "little") & ~base
        mine = int.from_bytes(self._visited, "little") & ~base
        both = theirs & mine
        if both:
            raise _corrupt(where, f"page {(both & -both).bit_length() - 1} is reachable twice")
        self._visited[:] = (base | mine | theirs).to_bytes(len(self._visited), "little")
        self.pages += pages
        self.branch_pages += branch_pages

    def leaves(self, bucket: BucketRef) -> Iterator[Leaf]:
        """The leaf pages of ``bucket`` in key order."""
        where = bucket_label(bucket)
        if bucket.root == 0:
            inline = bucket.inline
            return iter((parse_leaf(inline, _BUCKET_HEADER.size, len(inline), None, where)[0],))
        return self.leaves_of(bucket.root, where)

    def items(self, bucket: BucketRef) -> Iterator[tuple[bytes, bytes, int]]:
        """``(key, value, flags)`` of ``bucket`` in key order."""
        for leaf in self.leaves(bucket):
            yield from leaf.items()

    def leaves_of(self, root: int, where: str) -> Iterator[Leaf]:
        """The leaf pages of the tree at page ``root`` in key order."""
        return self.leaves_below([(root, None)], where, root)

    def branch_children(self, pgid: int, where: str) -> list[tuple[bytes, int]] | None:
        """``(key, child)`` of page ``pgid`` if it is a branch page (then visited and checked, as by the walk),
        ``None`` (and not visited) if it is not."""
        if not 2 <= pgid < self.db.meta.pgid:
            return None
        if _PAGE_HEADER.unpack_from(self.db._mm, pgid * self.db.page_size)[1] != BRANCH_PAGE:
            return None
        start, end, _flags, count = self._page(pgid, where)
        self.branch_pages += 1
        return parse_branch(self.db._mm, start, end, count, f"{where}, page {pgid}")

    def leaves_below(self, starts: list[tuple[int, bytes | None]], where: str,
                     root: int | None = None) -> Iterator[Leaf]:
        """The leaf pages of the subtrees at ``starts`` (in key order: each a page and the lowest key its
        subtree may hold, or ``None``); ``root`` is the bucket's root page, the one leaf allowed to be empty."""
        # the hot loop of every walk: _page's checks inlined (one function call less per page)
        db = self.db
        mm, size, high = db._mm, db.page_size, db.meta.pgid
        seen = self._visited
        unpack_header = _PAGE_HEADER.unpack_from
        prev: bytes | None = None
        stack: list[tuple[int, bytes | None]] = starts[::-1]
        pop, extend = stack.pop, stack.extend
        pages = touched = 0  # kept in locals, added to the walk's and the file's counters when the walk ends
        try:
            while stack:
                pgid, lower = pop()
                if not 2 <= pgid < high:
                    raise _corrupt(where, f"page {pgid} is outside the database (high-water mark {high})")
                start = pgid * size
                pid, flags, count, overflow = unpack_header(mm, start)
                if (overflow or pid != pgid or seen[pgid >> 3] & (1 << (pgid & 7))
                        or (flags != LEAF_PAGE and flags != BRANCH_PAGE)):  # noqa: PLR1714 - hot path
                    start, end, flags, count = self._page(pgid, where)  # the slow path says what is wrong
                else:
                    seen[pgid >> 3] |= 1 << (pgid & 7)
                    pages += 1
                    end = start + size
                    touched += size
                    if touched > RSS_BUDGET:
                        db._release()
                        touched = 0
                if flags == LEAF_PAGE:
                    if count == 0 and pgid != root:
                        raise _corrupt(where, f"leaf page {pgid} is empty")
                    leaf, last = parse_leaf(mm, start, end, prev, where, pgid, lower)
                    if last is not None:
                        prev = last
                    yield leaf
                else:
                    children = parse_branch(mm, start, end, count, f"{where}, page {pgid}")
                    self.branch_pages += 1
                    if lower is not None and children[0][0] < lower:
                        raise _corrupt(where, f"page {pgid} holds keys below its branch key")
                    extend((child, key) for key, child in reversed(children))
        finally:
            self.pages += pages
            db._touched += touched


def bucket_label(bucket: BucketRef) -> str:
    """How messages name a top-level bucket."""
    return f"bucket {bucket.name.decode('utf-8', 'backslashreplace')!r}"


def bucket_ref(name: bytes, value: bytes, where: str) -> BucketRef:
    if len(value) < _BUCKET_HEADER.size:
        raise _corrupt(where, f"bucket header is {len(value)} bytes")
    root, _seq = _BUCKET_HEADER.unpack_from(value)
    if root == 0:
        if len(value) < _BUCKET_HEADER.size + _HDR:
            raise _corrupt(where, "inline bucket too short")
        _pid, flags, _count, overflow = _PAGE_HEADER.unpack_from(value, _BUCKET_HEADER.size)
        if flags != LEAF_PAGE or overflow:
            raise _corrupt(where, f"inline bucket page has flags 0x{flags:x}, overflow {overflow}")
        return BucketRef(name, 0, value)
    return BucketRef(name, root, b"")


def parse_leaf(buf: bytes | mmap.mmap, base: int, limit: int, prev: bytes | None, where: str,
               pgid: int | None = None, lower: bytes | None = None) -> tuple[Leaf, bytes | None]:
    """Parse the leaf page image at ``buf[base:limit]``: ``prev`` is the key before it (order check),
    ``lower`` the key of its branch element (no key of the page may be below it)."""
    count = _PAGE_HEADER.unpack_from(buf, base)[2]
    first = base + _HDR
    data_start = first + _ELEM * count
    if data_start > limit:
        raise _leaf_error(where, pgid, f"{count} elements do not fit in the page")
    entries: list[tuple[int, int, int, int]] = []
    append = entries.append
    contiguous = True
    subbuckets = False
    expect = data_start
    eoff = first
    for flags, pos, ksize, vsize in _LEAF_ELEM.iter_unpack(buf[first:data_start]):
        ks = eoff + pos
        ke = ks + ksize
        ve = ke + vsize
        if ks < data_start or ve > limit or not ksize or flags > BUCKET_LEAF_FLAG:
            raise _leaf_error(where, pgid, _bad_element(len(entries), ks - base, ve - base, ksize, flags,
                                                        data_start - base, limit - base))
        key = buf[ks:ke]
        if prev is not None and key <= prev:
            raise _leaf_error(where, pgid, f"keys out of order at element {len(entries)}")
        if lower is not None:
            if key < lower:
                raise _corrupt(where, f"page {pgid} holds keys below its branch key")
            lower = None  # keys ascend: the first one is the one to compare
        prev = key
        if ks != expect:
            contiguous = False
        expect = ve
        if flags:
            subbuckets = True
        append((flags, ks, ke, ve))
        eoff += _ELEM
    return Leaf(buf, entries, contiguous, subbuckets), prev


def _leaf_error(where: str, pgid: int | None, what: str) -> SnapshotCorrupt:
    return _corrupt(where if pgid is None else f"{where}, page {pgid}", what)


def _bad_element(i: int, ks: int, ve: int, ksize: int, flags: int, data_start: int, limit: int) -> str:
    if ks < data_start or ve > limit:
        return f"element {i} points outside the page"
    if not ksize:
        return f"element {i} has an empty key"
    return f"element {i} has unknown flags 0x{flags:x}"


def parse_branch(buf: bytes | mmap.mmap, base: int, limit: int, count: int, where: str) -> list[tuple[bytes, int]]:
    """``(key, child pgid)`` of the branch page at ``buf[base:limit]``, checked."""
    if count == 0:
        raise _corrupt(where, "empty branch page")
    first = base + _HDR
    data_start = first + _ELEM * count
    if data_start > limit:
        raise _corrupt(where, f"{count} elements do not fit in the page")
    out: list[tuple[bytes, int]] = []
    prev: bytes | None = None
    eoff = first
    for pos, ksize, child in _BRANCH_ELEM.iter_unpack(buf[first:data_start]):
        ks = eoff + pos
        ke = ks + ksize
        if ks < data_start or ke > limit or ksize == 0:
            raise _corrupt(where, f"branch element {len(out)} points outside the page")
        key = buf[ks:ke]
        if prev is not None and key <= prev:
            raise _corrupt(where, f"branch keys out of order at element {len(out)}")
        prev = key
        out.append((key, child))
        eoff += _ELEM
    return out

"""Check a snapshot as it streams past: the structure walk and status of :func:`.verify.verify_db`, with no
copy of the database on disk.

Why: an encoded backup (zstd, age) or one written to an object store has no plain database file to walk
afterwards, and writing one only to read it back doubles what a backup writes (on this project's reference
machine a GiB of fresh page cache costs ~3 s of system time, more than the structure walk itself).

How: the bytes arrive in file order; the tree does not (a branch page comes before or after its children,
as the allocator placed them). So every page start is summarised as it passes, and only the summary is
kept, appended to a spill file beside the backup's other temporary files:

* a leaf: its entry count, first and last key, the CRC-32C of its key/value bytes (what the status hash
  needs), its top-level bucket entries, and the outcome of the etcd checks of :mod:`.kvcheck`;
* a branch: its children and their keys;
* anything else (a page inside an overflow run, a free page's garbage): its header, in the index.

A page's problems are recorded, not raised: a free page may hold anything. At the end, the tree is walked
from the meta page's root over the summaries with the checks of :class:`.bbolt.Walk` (page inside the
database, header id, flags, no page reached twice, keys in order and not below their branch key), the
etcd checks are applied to the ``key`` and ``meta`` buckets' leaves, and the status hash is put together in
tree order from the per-leaf CRCs: CRC-32C is linear, so ``crc(a‖b) = crc(b) ⊕ crc(0ⁿ, crc(a)) ⊕ crc(0ⁿ, 0)``
with ``n = |b|`` (:func:`combine`).

Memory: the pages of one overflow run being assembled (a large value; runs over :data:`MAX_RUN` are not
buffered and cannot be checked here), one window of the index (:data:`WINDOW` pages; the index holds 8 bytes
per database page, so it is spilled too, window by window, into the same file), and a window of the spill
file while the tree is walked.
"""

from __future__ import annotations

import contextlib
import marshal
import mmap
import os
import struct
from array import array
from pathlib import Path
from typing import Any

from etcdwarden.snapshot.bbolt import (
    _BUCKET_HEADER,
    _PAGE_HEADER,
    BRANCH_PAGE,
    BUCKET_LEAF_FLAG,
    LEAF_PAGE,
    RSS_BUDGET,
    TRAILER_SIZE,
    BucketRef,
    Leaf,
    Meta,
    _read_meta,
    bucket_label,
    bucket_ref,
    parse_branch,
    parse_leaf,
)
from etcdwarden.snapshot.crc import crc32c
from etcdwarden.snapshot.errors import SnapshotCorrupt
from etcdwarden.snapshot.kvcheck import check_key_leaf, check_meta_leaf
from etcdwarden.snapshot.status import FINISHED_COMPACT, KEY_BUCKET, META_BUCKET, SnapshotStatus

#: an overflow run (one page and the pages of a large value) longer than this is not assembled
MAX_RUN = 32 * 1024 * 1024
_HERE = "\x00"  # stands for the bucket in a summary's message; the walk puts the bucket's name in its place
_NOT_PAGE = 1 << 63  # index entry of a page start that is no branch or leaf page: flags and id below
_PAST_END = 1 << 62  # ... a branch or leaf page whose overflow runs past the high-water mark (overflow below)
_TOO_LARGE = 1 << 61  # ... a run longer than MAX_RUN (overflow below)
_BAD_ID = 1 << 60  # with _NOT_PAGE: the header names another page
_ZEROS = bytes(1 << 18)
#: index entries held in memory while the stream passes (512 KiB); the full windows go to the spill file
WINDOW = 1 << 16
_ENTRY = struct.Struct("<Q")
#: what one index lookup counts for towards the walk's RSS budget (it maps a page of the spilled index)
_LOOKUP_COST = 1024


def _zeros_crc(n: int, value: int) -> int:
    view = memoryview(_ZEROS)
    while n > 0:
        k = min(n, len(_ZEROS))
        value = crc32c(view[:k], value=value)
        n -= k
    return value


def combine(h: int, crc: int, n: int, cache: dict[int, int]) -> int:
    """``crc32c(b, value=h)`` from ``crc = crc32c(b)`` and ``n = len(b)``, without ``b``."""
    zero = cache.get(n)
    if zero is None:
        zero = cache[n] = _zeros_crc(n, 0)
    return crc ^ _zeros_crc(n, h) ^ zero


def _leaf_crc(leaf: Leaf, h: int) -> tuple[int, int]:
    """The CRC of a leaf's key/value bytes as etcdutl's status feeds them (a nested bucket: its name only),
    continued from ``h``, and their length."""
    entries, buf = leaf.entries, leaf.buf
    view = memoryview(buf)
    try:
        if leaf.contiguous and not leaf.has_subbuckets:
            a, b = entries[0][1], entries[-1][3]
            return crc32c(view[a:b], value=h), b - a
        n = 0
        for flags, ks, ke, ve in entries:
            end = ke if flags else ve
            h = crc32c(view[ks:end], value=h)
            n += end - ks
        return h, n
    finally:
        view.release()


def _summarise_leaf(leaf: Leaf, last: bytes | None, overflow: int) -> tuple[Any, ...]:
    """``("L", overflow, count, crc, crc length, first key, last key, key-check error, meta error, compacted,
    bucket entries)``: the bucket entries ``(name, value, flags)`` only when the leaf holds a nested bucket."""
    entries = leaf.entries
    if not entries:
        return ("L", overflow, 0, 0, 0, None, None, None, None, None, None)
    buf = leaf.buf
    crc, length = _leaf_crc(leaf, 0)
    first = bytes(buf[entries[0][1] : entries[0][2]])
    key_error = meta_error = None
    compacted = None
    try:
        check_key_leaf(leaf)
    except SnapshotCorrupt as e:
        key_error = str(e)  # not a key bucket leaf, or a broken one; it may be the meta bucket's
        try:
            check_meta_leaf(leaf)
        except SnapshotCorrupt as e2:
            meta_error = str(e2)
        for key, value, _flags in leaf.items():
            if key == FINISHED_COMPACT and len(value) >= 8:
                compacted = int.from_bytes(value[:8], "big", signed=True)
    buckets = [(bytes(k), bytes(v), f) for k, v, f in leaf.items()] if leaf.has_subbuckets else None
    return ("L", overflow, len(entries), crc, length, first, last, key_error, meta_error, compacted, buckets)


class StreamCheck:
    """Fed the snapshot's bytes in order (:meth:`feed`, the sha256 trailer included); :meth:`finish` walks the
    summaries and returns what :func:`.verify.verify_db` would find, or raises :class:`SnapshotCorrupt`.

    ``spill``: where to write the summaries (a new file of a private directory, mode 0600; removed by
    :meth:`close`)."""

    def __init__(self, spill: Path) -> None:
        self.spill_path = spill
        fd = os.open(spill, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._spill = os.fdopen(fd, "wb", buffering=1 << 18)
        self._spill_size = 0
        self.buf = bytearray()
        self.base = 0  # absolute offset of buf[0]
        self.received = 0
        self.meta: Meta | None = None
        self.metas: tuple[Meta | None, Meta | None] = (None, None)
        self.page_size = 0
        self.high = 0
        # the index: entries of the pages from `wbase` on in `window`; the windows before it in the spill file
        # (at the offsets in `windows`); an entry settled only after its window was spilled (an overflow run
        # that arrived across the window's end) in `late`
        self.window = array("Q")
        self.wbase = 0
        self.windows: list[int] = []
        self.late: dict[int, int] = {}
        self.next = 2  # the next page start to summarise
        self.pending: list[tuple[int, int]] = []  # (page, end offset) of runs still arriving
        self.error: str | None = None  # a problem found before the walk (meta pages)
        #: the highest revision among the last keys of the leaves that look like the ``key`` bucket's: before
        #: :meth:`finish`, what the snapshot's revision will be found to be (a freed page holds older ones)
        self.revision_seen = 0

    # -- in the stream ----------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.error is not None:
            return  # already failed (meta pages): nothing more is kept
        self.buf += data
        if self.meta is None:
            self._metas()
            if self.error is not None:
                self.buf = bytearray()
        if self.meta is not None:
            self._pages()

    def _metas(self) -> None:
        buf = self.buf
        if len(buf) < 4096 + 2 * 1024:  # meta 0's fields; then meta 1 one page further
            return
        m0 = _read_meta(buf, len(buf), 0, 0)  # type: ignore[arg-type]
        if m0 is not None and m0.valid:
            ps = m0.page_size
            if len(buf) < 2 * ps:
                return
        else:  # as BoltFile: find meta 1 by probing page sizes
            ps = 0
            for i in range(15):
                if len(buf) < (2048 << i) + 1024:
                    return
                probe = _read_meta(buf, len(buf), 1, 1024 << i)  # type: ignore[arg-type]
                if probe is not None and probe.valid and probe.page_size == 1024 << i:
                    ps = probe.page_size
                    break
            if not ps:
                self.error = "no valid meta page"
                return
        m1 = _read_meta(buf, len(buf), 1, ps)  # type: ignore[arg-type]
        self.metas = (m0, m1)
        for i, m in enumerate(self.metas):
            if m is None or m.problem is not None:
                self.error = f"meta page {i} is " + ("missing" if m is None else f"invalid: {m.problem}")
                return
        assert m0 is not None and m1 is not None
        self.meta = max((m0, m1), key=lambda m: m.txid)
        self.page_size, self.high = self.meta.page_size, self.meta.pgid
        self.window = array("Q", [0]) * min(WINDOW, self.high)  # made in place: no zero-filled bytes copied in

    def _pages(self) -> None:
        ps, high, buf = self.page_size, self.high, self.buf
        avail = self.received
        upto = min(high, avail // ps)
        unpack = _PAGE_HEADER.unpack_from
        p = self.next
        while p < upto:
            if p >= self.wbase + WINDOW:
                self._spill_window()
            index, wbase = self.window, self.wbase
            stop = min(upto, wbase + WINDOW)
            while p < stop:
                pid, flags, count, overflow = unpack(buf, p * ps - self.base)
                if pid != p or (flags != LEAF_PAGE and flags != BRANCH_PAGE):  # noqa: PLR1714 - hot path
                    index[p - wbase] = (_NOT_PAGE | (_BAD_ID if pid != p else 0) | (flags & 0xFFFF) << 32
                                        | (pid & 0xFFFFFFFF))
                elif p + overflow >= high:
                    index[p - wbase] = _PAST_END | overflow
                elif (overflow + 1) * ps > MAX_RUN:
                    index[p - wbase] = _TOO_LARGE | overflow
                elif (p + overflow + 1) * ps <= avail:
                    self._summarise(p, flags, count, overflow)
                else:
                    self.pending.append((p, (p + overflow + 1) * ps))
                p += 1
        self.next = p
        if self.pending:
            still = []
            for q, end in self.pending:
                if end <= avail:
                    pid, flags, count, overflow = unpack(buf, q * ps - self.base)
                    self._summarise(q, flags, count, overflow)
                else:
                    still.append((q, end))
            self.pending = still
        keep = min([q * ps for q, _ in self.pending] + [p * ps])
        if keep > self.base:
            del buf[: keep - self.base]
            self.base = keep

    def _summarise(self, p: int, flags: int, count: int, overflow: int) -> None:
        ps = self.page_size
        start = p * ps - self.base
        run = bytes(self.buf[start : start + (overflow + 1) * ps])
        record: tuple[Any, ...]
        if flags == LEAF_PAGE:
            try:
                leaf, last = parse_leaf(run, 0, len(run), None, _HERE, p)
                record = _summarise_leaf(leaf, last, overflow)
                if record[7] is None and last is not None and len(last) >= 8:  # a key bucket leaf
                    self.revision_seen = max(self.revision_seen, int.from_bytes(last[:8], "big", signed=True))
            except SnapshotCorrupt as e:
                record = ("E", overflow, str(e))
        else:
            try:
                record = ("B", overflow, parse_branch(run, 0, len(run), count, f"{_HERE}, page {p}"))
            except SnapshotCorrupt as e:
                record = ("E", overflow, str(e))
        blob = marshal.dumps(record)
        if p >= self.wbase:
            self.window[p - self.wbase] = self._spill_size + 1
        else:
            self.late[p] = self._spill_size + 1
        self._spill.write(len(blob).to_bytes(4, "little"))
        self._spill.write(blob)
        self._spill_size += 4 + len(blob)

    def _spill_window(self) -> None:
        """Append the index window to the spill file; the next one starts empty."""
        n = min(WINDOW, self.high - self.wbase)
        if n <= 0:
            return
        self.windows.append(self._spill_size)
        self._spill.write(memoryview(self.window)[:n])
        self._spill_size += 8 * n
        self.wbase += WINDOW
        self.window = array("Q", [0]) * min(WINDOW, max(0, self.high - self.wbase))

    # -- at the end -------------------------------------------------------------------------------------------
    def finish(self) -> tuple[SnapshotStatus, int, int]:
        """(status, pages checked, ``key`` bucket entries) of the snapshot, after every check passed."""
        if self.error is not None:
            raise SnapshotCorrupt(self.error)
        meta = self.meta
        if meta is None:
            raise SnapshotCorrupt(f"{self.received} bytes is too small for a bbolt database")
        data_size = self.received - TRAILER_SIZE
        size = meta.pgid * meta.page_size
        if size > data_size:
            raise SnapshotCorrupt(f"truncated: the database needs {size} bytes ({meta.pgid} pages of "
                                  f"{meta.page_size}) but the stream holds {data_size} before the sha256 trailer")
        if data_size != size:
            raise SnapshotCorrupt(f"{data_size - size} bytes between the database end and the sha256 trailer")
        self._spill_window()
        self._spill.close()
        self.buf = bytearray()
        if self._spill_size == 0:
            return _Walker(self, b"").run()
        fd = os.open(self.spill_path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, self._spill_size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        try:
            return _Walker(self, mm).run()
        finally:
            mm.close()

    def close(self) -> None:
        """Remove the spill file (whether or not :meth:`finish` ran)."""
        if not self._spill.closed:
            self._spill.close()
        with contextlib.suppress(FileNotFoundError):
            self.spill_path.unlink()


class _Walker:
    """The end of a :class:`StreamCheck`: the tree walked over the summaries."""

    def __init__(self, check: StreamCheck, spill: mmap.mmap | bytes) -> None:
        self.c = check
        self.spill = spill
        assert check.meta is not None
        self.meta = check.meta
        self.visited = bytearray((self.meta.pgid >> 3) + 1)
        self.pages = 0
        self.touched = 0
        self.zero_cache: dict[int, int] = {}

    def _record(self, p: int, where: str) -> tuple[Any, ...]:
        high = self.meta.pgid
        if not 2 <= p < high:
            raise SnapshotCorrupt(f"{where}: page {p} is outside the database (high-water mark {high})")
        entry = self._entry(p)
        if entry & _NOT_PAGE:
            pid, flags = entry & 0xFFFFFFFF, (entry >> 32) & 0xFFFF
            if entry & _BAD_ID:
                raise SnapshotCorrupt(f"{where}: page {p} has id {pid} in its header")
            self._visit(p, 0, where)
            raise SnapshotCorrupt(f"{where}: page {p} has flags 0x{flags:x}, expected a branch or leaf page")
        if entry & _PAST_END:
            raise SnapshotCorrupt(f"{where}: page {p} overflows ({entry & 0xFFFFFFFF} pages) past the high-water "
                                  f"mark {high}")
        if entry & _TOO_LARGE:
            raise SnapshotCorrupt(f"{where}: page {p} and its {entry & 0xFFFFFFFF} overflow pages are more than "
                                  f"{MAX_RUN >> 20} MiB: too large to check as the snapshot streams (back up with "
                                  "--verify hash, then run `etcdwarden snapshot verify` on a local copy)")
        if entry == 0:
            raise SnapshotCorrupt(f"{where}: page {p} never arrived (the stream ended inside its overflow pages)")
        off = entry - 1
        n = int.from_bytes(self.spill[off : off + 4], "little")
        # our own file, written by this process in a private directory
        record: tuple[Any, ...] = marshal.loads(self.spill[off + 4 : off + 4 + n])  # noqa: S302
        self.touched += n
        if self.touched > RSS_BUDGET and isinstance(self.spill, mmap.mmap):
            self.touched = 0
            if hasattr(mmap, "MADV_DONTNEED"):
                self.spill.madvise(mmap.MADV_DONTNEED)
        return record

    def _entry(self, p: int) -> int:
        c = self.c
        late = c.late.get(p) if c.late else None
        if late is not None:
            return late
        w, i = divmod(p, WINDOW)
        if w >= len(c.windows):
            return 0  # (never: the stream held every page, or the walk did not start)
        self.touched += _LOOKUP_COST
        return int(_ENTRY.unpack_from(self.spill, c.windows[w] + 8 * i)[0])

    def _visit(self, p: int, overflow: int, where: str) -> None:
        seen = self.visited
        for q in range(p, p + overflow + 1):
            bit = 1 << (q & 7)
            if seen[q >> 3] & bit:
                raise SnapshotCorrupt(f"{where}: page {q} is reachable twice")
            seen[q >> 3] |= bit
        self.pages += overflow + 1

    def _page(self, p: int, where: str) -> tuple[Any, ...]:
        record = self._record(p, where)
        self._visit(p, record[1], where)
        if record[0] == "E":
            raise SnapshotCorrupt(record[2].replace(_HERE, where, 1))
        return record

    def run(self) -> tuple[SnapshotStatus, int, int]:
        h = 0
        total = 0
        entries = 0
        last_key: bytes | None = None
        compacted = 0
        seen: set[bytes] = set()
        for bucket in self._buckets():
            seen.add(bucket.name)
            h = crc32c(bucket.name, value=h)
            is_key, is_meta = bucket.name == KEY_BUCKET, bucket.name == META_BUCKET
            for leaf in self._leaves(bucket):
                (_k, _o, count, crc, length, _first, last, key_error, meta_error, compact, _buckets) = leaf
                if not count:
                    continue
                h = combine(h, crc, length, self.zero_cache)
                total += count
                if is_key:
                    if key_error is not None:
                        raise SnapshotCorrupt(key_error)
                    entries += count
                    last_key = last
                elif is_meta:
                    if meta_error is not None:
                        raise SnapshotCorrupt(meta_error)
                    if compact is not None:
                        compacted = compact
        for required in (KEY_BUCKET, META_BUCKET):
            if required not in seen:
                raise SnapshotCorrupt(f"no {required.decode()!r} bucket: not an etcd database")
        revision = 0
        if last_key is not None:
            if len(last_key) < 8:
                raise SnapshotCorrupt(f"key bucket: key {last_key!r} is not a revision")
            revision = int.from_bytes(last_key[:8], "big", signed=True)
        status = SnapshotStatus(h, revision, total, self.meta.pgid * self.meta.page_size, compacted)
        return status, self.pages, entries

    def _buckets(self) -> list[BucketRef]:
        out = []
        for leaf in self._leaves_of(self.meta.root, "root bucket"):
            if leaf[2] and leaf[10] is None:  # entries, none of them a bucket
                raise SnapshotCorrupt(f"root bucket: entry {leaf[5]!r} is not a bucket")
            for name, value, flags in leaf[10] or ():
                if not flags & BUCKET_LEAF_FLAG:
                    raise SnapshotCorrupt(f"root bucket: entry {name!r} is not a bucket")
                out.append(bucket_ref(name, value, f"bucket {name!r}"))
        return out

    def _leaves(self, bucket: BucketRef) -> Any:
        where = bucket_label(bucket)
        if bucket.root != 0:
            return self._leaves_of(bucket.root, where)
        leaf, last = parse_leaf(bucket.inline, _BUCKET_HEADER.size, len(bucket.inline), None, where)
        record = _summarise_leaf(leaf, last, 0)
        return iter((record,))

    def _leaves_of(self, root: int, where: str) -> Any:
        prev: bytes | None = None
        stack: list[tuple[int, bytes | None]] = [(root, None)]
        while stack:
            p, lower = stack.pop()
            record = self._page(p, where)
            if record[0] == "L":
                count, first, last = record[2], record[5], record[6]
                if count == 0 and p != root:
                    raise SnapshotCorrupt(f"{where}: leaf page {p} is empty")
                if first is not None:
                    if prev is not None and first <= prev:
                        raise SnapshotCorrupt(f"{where}, page {p}: keys out of order at element 0")
                    if lower is not None and first < lower:
                        raise SnapshotCorrupt(f"{where}: page {p} holds keys below its branch key")
                    prev = last
                yield record
            else:
                children = record[2]
                if lower is not None and children[0][0] < lower:
                    raise SnapshotCorrupt(f"{where}: page {p} holds keys below its branch key")
                stack.extend((child, key) for key, child in reversed(children))

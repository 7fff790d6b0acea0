"""memory.trim gives freed heap pages back: the backup calls it between its stream and its verification."""

from __future__ import annotations

import pytest

from etcdwarden import memory

pytestmark = pytest.mark.unit


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_trim_returns_freed_heap_pages() -> None:
    # 64 MiB in 32 KiB blocks (below glibc's mmap threshold: they come from the heap), each followed by a small
    # one that stays (over 512 bytes: malloc's, not Python's small-object pools), so the freed space is never
    # at the heap's top, where free() itself would give it back: only malloc_trim can
    blocks = [(bytes(32 * 1024 - 64) + b"x", bytearray(1024)) for _ in range(2048)]
    keep = [small for _big, small in blocks]
    del blocks
    before = _rss_kib()
    memory.trim()
    after = _rss_kib()
    # (not all 64 MiB: in a long test process some blocks reuse free space the heap held already)
    assert before - after > 16 * 1024, (before, after)
    assert len(keep) == 2048

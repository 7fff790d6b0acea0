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


_ARENAS = r"""
import sys, threading
from etcdwarden import memory
if sys.argv[1] == "one":
    assert memory.one_arena()
def work():
    for _ in range(200):
        blobs = [bytearray(40_000) for _ in range(20)]  # malloc's, from the thread's arena
        del blobs
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
# an arena other than the main one is a heap of its own, mapped at a multiple of its 64 MiB maximum size
heaps = 0
with open("/proc/self/maps") as f:
    for line in f:
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start % (64 << 20) == 0 and end - start <= 64 << 20 and line.split()[1] == "rw-p":
            heaps += 1
print(heaps)
"""


def test_one_arena_keeps_every_thread_on_the_main_arena() -> None:
    import subprocess
    import sys

    def heaps(mode: str) -> int:
        r = subprocess.run([sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, check=True)
        return int(r.stdout)

    assert heaps("default") >= 2  # glibc's default: a thread that allocates gets an arena of its own
    assert heaps("one") == 0

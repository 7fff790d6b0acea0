"""The walk split over processes (:mod:`etcdwarden.snapshot.parallel`) and the CRC joining it needs.

Forking is refused while another thread runs, and the test process runs the tier watcher's thread: the
tests that need real workers run their code in a fresh interpreter (a child process that is no server).
The status of real snapshots walked in several processes is compared with etcdutl in ``test_status.py``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from etcdwarden.snapshot import SnapshotCorrupt
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.crc import combine, crc32c
from etcdwarden.snapshot.parallel import can_fork, split

pytestmark = pytest.mark.unit

SMALL = Path(__file__).parents[1] / "format" / "fixtures" / "v1-plain" / "snapshot_2026-12-02_135418.db"


def in_child(code: str, *args: str, timeout: float = 60) -> dict[str, object]:
    """Run ``code`` (which prints one JSON object last) in a fresh interpreter with one thread."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout.splitlines()[-1])
    return out


def test_combine_is_the_crc_of_the_concatenation() -> None:
    rnd = random.Random(5)
    for i in range(300):
        a = rnd.randbytes(rnd.randrange(0, 3000))
        b = rnd.randbytes(rnd.randrange(0, 2_000_000 if i < 4 else 3000))
        assert combine(crc32c(a), crc32c(b), len(b)) == crc32c(a + b)
        h = rnd.getrandbits(32)
        assert combine(h, crc32c(b), len(b)) == crc32c(b, value=h)  # continuing a running CRC


def test_split_keeps_order_and_balance() -> None:
    starts: list[tuple[int, bytes | None]] = [(p, bytes([p])) for p in range(10, 27)]
    for groups in (1, 2, 3, 5, 17, 40):
        parts = split(starts, groups)
        assert [s for part in parts for s in part] == starts
        assert len(parts) == min(groups, len(starts)) and all(parts)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert split([], 4) == [[]]


def test_absorb_merges_the_pages_another_walk_reached_and_refuses_a_shared_page() -> None:
    with BoltFile(SMALL) as db:
        walk = db.walk()
        since = walk.visited()
        other = db.walk()
        for w, pages in ((walk, (2, 3)), (other, (4,))):
            for p in pages:
                w._visited[p >> 3] |= 1 << (p & 7)
        walk.absorb(other.visited(), since, 1, 0, "bucket 'key'")
        assert walk.visited()[0] == 0b11100 and walk.pages == 1
        twice = db.walk()
        twice._visited[0] |= 1 << 3
        with pytest.raises(SnapshotCorrupt, match="bucket 'key': page 3 is reachable twice"):
            walk.absorb(twice.visited(), since, 1, 0, "bucket 'key'")


_GROUPS = """
import json, os, sys, threading, time
from etcdwarden.snapshot import SnapshotCorrupt, parallel
from etcdwarden.snapshot.bbolt import BoltFile
parent = os.getpid()
groups = [[(2, None)], [(3, b"a")], [(4, b"b")]]
def run(work):
    with BoltFile(sys.argv[1]) as db:
        try:
            return parallel.run_groups(db.walk(), groups, work, "bucket 'key'")
        except SnapshotCorrupt as e:
            return "corrupt: " + str(e)
"""


def test_groups_run_in_workers_and_come_back_in_order() -> None:
    out = in_child(_GROUPS + """
def work(walk, group):
    time.sleep(0.2 if group[0][0] == 2 else 0)  # the first worker finishes last
    return [group[0][0], os.getpid() != parent]
print(json.dumps({"results": run(work)}))
""", str(SMALL))
    assert out["results"] == [[2, True], [3, True], [4, False]]


def test_a_worker_that_cannot_report_has_its_group_walked_here() -> None:
    out = in_child(_GROUPS + """
def work(walk, group):
    if os.getpid() != parent:
        os._exit(3)  # as if killed (out of memory)
    return group[0][0]
print(json.dumps({"results": run(work)}))
""", str(SMALL))
    assert out["results"] == [2, 3, 4]


def test_the_first_corruption_in_key_order_is_raised() -> None:
    out = in_child(_GROUPS + """
def work(walk, group):
    page = group[0][0]
    if page == 2:
        time.sleep(0.3)
    if page in (2, 4):
        raise SnapshotCorrupt(f"damage under page {page}")
    return page
print(json.dumps({"results": run(work)}))
""", str(SMALL))
    assert out["results"] == "corrupt: damage under page 2"


def test_no_worker_is_forked_while_another_thread_runs() -> None:
    assert not can_fork()  # this process runs the tier watcher's thread
    out = in_child(_GROUPS + """
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
try:
    print(json.dumps({"results": run(lambda walk, group: os.getpid() == parent)}))
finally:
    stop.set()
""", str(SMALL))
    assert out["results"] == [True, True, True]


def test_an_interrupt_stops_and_reaps_every_worker() -> None:
    start = time.monotonic()
    out = in_child(_GROUPS + """
def work(walk, group):
    if os.getpid() != parent:
        time.sleep(60)
        return None
    time.sleep(0.3)
    raise KeyboardInterrupt
try:
    run(work)
    left = "returned"
except KeyboardInterrupt:
    try:
        left = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        left = "none"
print(json.dumps({"children": left}))
""", str(SMALL))
    assert out["children"] == "none"
    assert time.monotonic() - start < 20

"""``snapshot status`` against the real ``etcdutl 3.5.1 snapshot status`` on real snapshots."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
import zstandard

from etcdwarden.binaries import find_binary
from etcdwarden.snapshot import bbolt
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.status import db_status, scan, snapshot_status
from tests.cli_helpers import cli
from tests.snapshot import etcdutl_status, make_snapshots, start_cluster
from tests.tiers import starts

NAMES = ["empty", "mixed", "many", "auth"]


@pytest.fixture(scope="module")
@starts("etcd")
def snaps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("status")
    cluster = start_cluster(base / "cluster")
    try:
        out = make_snapshots(cluster, base / "snaps")
    finally:
        cluster.stop()
    yield out


@pytest.mark.parametrize("name", NAMES)
def test_status_matches_etcdutl(snaps: dict[str, Path], name: str) -> None:
    path = snaps[name]
    assert path.stat().st_size % 512 == 32  # real `snapshot save` output, with the sha256 trailer
    assert db_status(path).as_json() == etcdutl_status(path)


@pytest.mark.parametrize("name", ["mixed", "many"])
def test_status_of_raw_db_without_trailer(snaps: dict[str, Path], name: str, tmp_path: Path) -> None:
    raw = tmp_path / "db"
    raw.write_bytes(snaps[name].read_bytes()[:-32])
    assert db_status(raw).as_json() == etcdutl_status(raw) == etcdutl_status(snaps[name])


def test_snapshot_shapes(snaps: dict[str, Path]) -> None:
    """The fixtures really exercise a multi-level tree, overflow pages, leases, auth and compaction."""
    with BoltFile(snaps["many"]) as db:
        st, walk = scan(db)
        assert walk.branch_pages > 1, "20k keys should give a key bucket of at least three levels"
        assert st.total_key > 20_000  # (128 puts per txn: one revision each)
    with BoltFile(snaps["mixed"]) as db:
        w = db.walk()
        names = [b.name for b in w.buckets()]
        assert names == sorted(names) and b"key" in names and b"lease" in names
        # the 200 KB value sits on a page with overflow pages: walk the key bucket and find it
        w2 = db.walk()
        key_bucket = next(b for b in w2.buckets() if b.name == b"key")
        sizes = [len(v) for _k, v, _f in w2.items(key_bucket)]
        assert max(sizes) > 200_000
        assert any(12_000 < s < 13_000 for s in sizes)
    with BoltFile(snaps["auth"]) as db:
        w = db.walk()
        users = next(b for b in w.buckets() if b.name == b"authUsers")
        assert sorted(k for k, _v, _f in w.items(users)) == [b"alice", b"root"]


def test_status_streams_with_small_rss_budget(snaps: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping mapped pages every 8 KiB (madvise path) changes nothing in the result."""
    monkeypatch.setattr(bbolt, "RSS_BUDGET", 8192)
    assert db_status(snaps["many"]).as_json() == etcdutl_status(snaps["many"])


def test_cli_output_identical_to_etcdutl(snaps: dict[str, Path]) -> None:
    etcdutl = str(find_binary("etcdutl"))
    for name in ("mixed", "auth"):
        for fmt in ("json", "table"):
            want = subprocess.run([etcdutl, "snapshot", "status", "-w", fmt, str(snaps[name])],
                                  capture_output=True, text=True, timeout=60, check=True).stdout
            r = cli("snapshot", "status", "-w", fmt, str(snaps[name]))
            assert r.code == 0, r.err
            assert r.out == want


def test_status_of_compressed_and_encrypted(snaps: dict[str, Path], tmp_path: Path) -> None:
    src = snaps["mixed"]
    want = etcdutl_status(src)
    zst = tmp_path / "s.db.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(src.read_bytes()))
    ident = pyrage.x25519.Identity.generate()
    idfile = tmp_path / "key.txt"
    idfile.write_text(f"# created: test\n{ident}\n")
    recipients = [ident.to_public()]
    age = tmp_path / "s.db.zst.age"
    age.write_bytes(pyrage.encrypt(zst.read_bytes(), recipients))
    age_plain = tmp_path / "s.db.age"
    age_plain.write_bytes(pyrage.encrypt(src.read_bytes(), recipients))
    assert snapshot_status(zst).as_json() == want
    assert snapshot_status(age, identity=idfile).as_json() == want
    assert snapshot_status(age_plain, identity=idfile).as_json() == want
    r = cli("snapshot", "status", "-w", "json", "--identity", str(idfile), str(age))
    assert r.code == 0 and json.loads(r.out) == want
    # no identity: usage error naming --identity; a wrong identity: refused, no traceback
    r = cli("snapshot", "status", str(age))
    assert r.code == 2 and "--identity" in r.err
    other = tmp_path / "other.txt"
    other.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    r = cli("snapshot", "status", "--identity", str(other), str(age))
    assert r.code == 2 and "cannot decrypt" in r.err
    # a truncated zstd stream ends as a truncated database, reported cleanly
    bad = tmp_path / "t.db.zst"
    bad.write_bytes(zst.read_bytes()[: zst.stat().st_size // 2])
    r = cli("snapshot", "status", str(bad))
    assert r.code == 1 and r.err.startswith("Error: ") and "Traceback" not in r.err
    # no temporary plaintext is left behind
    import tempfile
    assert not list(Path(tempfile.gettempdir()).glob("etcdwarden-snapshot-*"))


@pytest.mark.unit
def test_missing_and_not_a_db(tmp_path: Path) -> None:
    r = cli("snapshot", "status", str(tmp_path / "nope.db"))
    assert r.code == 2 and "no such file" in r.err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00" * 16384)
    r = cli("snapshot", "status", str(junk))
    assert r.code == 1 and "no valid meta page" in r.err


# -- the key bucket walked by several processes (etcdwarden.snapshot.parallel) ----------------------------------
# Forking is refused while another thread runs (the test process runs the tier watcher's): these run in a
# fresh interpreter, with the size below which one process walks lowered to nothing.
_SPLIT = """
import json, sys
from etcdwarden.snapshot import SnapshotCorrupt, parallel, status
from etcdwarden.snapshot.bbolt import BoltFile
status.PARALLEL_MIN_BYTES = 0
forks = []
real_fork = parallel._fork
def spy(*a):
    worker = real_fork(*a)
    forks.append(worker is not None)
    return worker
parallel._fork = spy
def outcome(path, workers):
    with BoltFile(path) as db:
        try:
            st, walk = status.scan(db, workers=workers)
        except SnapshotCorrupt as e:
            return ["corrupt", str(e)]
        return [st.as_json(), st.compact_revision, walk.pages, walk.visited().hex()]
"""


def in_child(code: str, *args: str) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", _SPLIT + code, *args], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout.splitlines()[-1])
    return out


@pytest.mark.parametrize(("name", "split"), [("empty", False), ("mixed", True), ("many", True)])
def test_status_walked_by_several_processes_matches_etcdutl(snaps: dict[str, Path], name: str,
                                                            split: bool) -> None:
    out = in_child("""
print(json.dumps({w: outcome(sys.argv[1], w) for w in (1, 2, 3)} | {"forks": forks}))
""", str(snaps[name]))
    assert out["1"][0] == out["2"][0] == out["3"][0] == etcdutl_status(snaps[name])
    assert out["1"][1:] == out["2"][1:] == out["3"][1:]  # the same pages, each reached once
    # two workers and one, then three and two, were forked; an empty key bucket's root is a leaf: no split
    assert out["forks"] == ([True, True, True] if split else [])


def test_several_processes_fail_exactly_where_one_does(snaps: dict[str, Path], tmp_path: Path) -> None:
    """Bit flips in the key bucket's pages (headers and element arrays mostly): the walk split over two
    processes fails exactly when the walk in one does, and gives the same status when both pass."""
    rnd = random.Random(7)
    raw = snaps["many"].read_bytes()
    with BoltFile(snaps["many"]) as db:
        ps, high = db.page_size, db.meta.pgid
    flips = []
    for i in range(150):
        page = rnd.randrange(2, high)
        off = page * ps + (rnd.randrange(0, 96) if rnd.random() < 0.8 else rnd.randrange(0, ps))
        buf = bytearray(raw)
        buf[off] ^= 1 << rnd.randrange(8)
        (tmp_path / f"{i}.db").write_bytes(buf)
        flips.append(str(tmp_path / f"{i}.db"))
    out = in_child("""
print(json.dumps({"pairs": [[outcome(p, 1), outcome(p, 2)] for p in sys.argv[1:]]}))
""", *flips)
    results = {"both failed": 0, "both passed": 0}
    for path, (one, two) in zip(flips, out["pairs"], strict=True):
        assert (one[0] == "corrupt") == (two[0] == "corrupt"), f"{path}: {one} / {two}"
        if one[0] != "corrupt":
            assert one == two, path
        results["both failed" if one[0] == "corrupt" else "both passed"] += 1
    assert results["both failed"] > 40 and results["both passed"] > 40, results


def test_cli_status_walked_by_several_processes(snaps: dict[str, Path]) -> None:
    etcdutl = str(find_binary("etcdutl"))
    for fmt in ("json", "table"):
        want = subprocess.run([etcdutl, "snapshot", "status", "-w", fmt, str(snaps["many"])],
                              capture_output=True, text=True, timeout=60, check=True).stdout
        out = in_child("""
import contextlib, io
from etcdwarden.cli.main import run
text = io.StringIO()
with contextlib.redirect_stdout(text):
    code = run(["snapshot", "status", "-w", sys.argv[1], sys.argv[2]])
print(json.dumps({"code": code, "out": text.getvalue(), "forks": forks}))
""", fmt, str(snaps["many"]))
        assert out["code"] == 0 and out["out"] == want
        assert out["forks"] and all(out["forks"])


def test_keys_out_of_order_across_the_split_are_found(snaps: dict[str, Path], tmp_path: Path) -> None:
    """The last key under the first worker's subtrees raised above the second worker's first key: each worker's
    keys are in order, the join is not; one process finds it as the next key, two at the join."""
    from etcdwarden.snapshot.bbolt import bucket_label
    from etcdwarden.snapshot.parallel import split

    with BoltFile(snaps["many"]) as db:
        walk = db.walk()
        key = next(b for b in walk.buckets() if b.name == b"key")
        children = walk.branch_children(key.root, bucket_label(key))
        assert children is not None
        first_group = split([(child, k) for k, child in children], 2)[0]
        last_leaf = list(walk.leaves_below(first_group, "key"))[-1]
        _flags, ks, _ke, _ve = last_leaf.entries[-1]
    raw = bytearray(snaps["many"].read_bytes())
    raw[ks] = 0x7F  # the revision's first byte: above every later key
    bad = tmp_path / "bad.db"
    bad.write_bytes(raw)
    out = in_child("""
print(json.dumps({"one": outcome(sys.argv[1], 1), "two": outcome(sys.argv[1], 2), "forks": forks}))
""", str(bad))
    assert out["one"][0] == "corrupt" and "keys out of order" in out["one"][1]
    assert out["two"] == ["corrupt", out["two"][1]] and "keys out of order across pages" in out["two"][1]
    assert out["forks"] == [True]

"""``snapshot status`` against the real ``etcdutl 3.5.1 snapshot status`` on real snapshots."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

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

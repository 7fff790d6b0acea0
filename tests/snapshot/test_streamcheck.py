"""The snapshot check made as the bytes stream past (no copy on disk) finds what the walk of the file finds:
the same status, pages and key entries for real snapshots, and a failure wherever the file walk fails."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.snapshot import SnapshotCorrupt, streamcheck
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.crc import crc32c
from etcdwarden.snapshot.streamcheck import StreamCheck, combine
from etcdwarden.snapshot.verify import verify_db
from tests.snapshot import bulk_put, make_snapshots, save, start_cluster
from tests.tiers import starts


@pytest.fixture(scope="module")
@starts("etcd")
def snaps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("streamcheck")
    cluster = start_cluster(base / "cluster")
    try:
        out = make_snapshots(cluster, base / "snaps", many=6000)  # the last one with auth enabled
    finally:
        cluster.stop()
    cluster = start_cluster(base / "cluster2")
    try:  # values large enough for overflow pages and the in-place KeyValue reader
        bulk_put(cluster, [(f"/large/{i}".encode(), bytes([i]) * 40_000) for i in range(30)], batch=4)
        out["large"] = save(cluster, base / "snaps" / "large.db")
    finally:
        cluster.stop()
    yield out


def stream(data: bytes, spill: Path, chunk: int | None = None, seed: int = 0) -> tuple[object, int, int]:
    """Feed ``data`` (database + trailer) in chunks of ``chunk`` bytes (random sizes when None)."""
    rnd = random.Random(seed)
    check = StreamCheck(spill / "summaries")
    try:
        pos = 0
        while pos < len(data):
            n = chunk or rnd.choice([1, 31, 4096, 4097, 65536, 1 << 20])
            check.feed(data[pos : pos + n])
            pos += n
        return check.finish()
    finally:
        check.close()
        assert not list(spill.iterdir()), "the spill file is removed"


@pytest.mark.parametrize("name", ["empty", "mixed", "many", "auth", "large"])
def test_same_findings_as_the_file_walk(snaps: dict[str, Path], name: str, tmp_path: Path) -> None:
    path = snaps[name]
    report = verify_db(path)
    data = path.read_bytes()
    for chunk in (None, 1000, 32 * 1024 + 1):
        status, pages, entries = stream(data, tmp_path, chunk)
        assert (status, pages, entries) == (report.status, report.pages, report.key_entries)


def test_the_revision_seen_in_the_stream_is_the_walks(snaps: dict[str, Path], tmp_path: Path) -> None:
    """What a backup asks HashKV at before its walk ends: the stream's highest key-bucket revision, equal to
    the revision the walk of the whole snapshot finds."""
    for name in ("mixed", "many", "large"):
        data = snaps[name].read_bytes()
        check = StreamCheck(tmp_path / "summaries")
        try:
            for pos in range(0, len(data), 65536):
                check.feed(data[pos : pos + 65536])
            seen = check.revision_seen
            assert seen > 1 and seen == check.finish()[0].revision, name
        finally:
            check.close()


@pytest.mark.parametrize("window", [1, 3, 7, 64])
def test_an_index_spilled_window_by_window_finds_the_same(snaps: dict[str, Path], tmp_path: Path, window: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The page index goes to the spill file a window at a time (memory stays flat); an entry settled after
    its window left (an overflow run arriving across the window's end) is kept aside: same findings."""
    monkeypatch.setattr(streamcheck, "WINDOW", window)
    late = 0
    for name in ("mixed", "many", "large"):
        path = snaps[name]
        report = verify_db(path)
        data = path.read_bytes()
        for chunk in (4096, 5000, 1 << 16):
            check = StreamCheck(tmp_path / "summaries")
            try:
                for pos in range(0, len(data), chunk):
                    check.feed(data[pos : pos + chunk])
                assert len(check.window) <= window
                late += len(check.late)
                assert check.finish() == (report.status, report.pages, report.key_entries), (name, chunk)
            finally:
                check.close()
    assert late > 0, "the case of a run settled after its window was spilled was met"


def test_every_damage_the_file_walk_finds_is_found(snaps: dict[str, Path], tmp_path: Path) -> None:
    """Single-bit flips (in page headers and element arrays mostly, where the structure lives): the streamed
    check fails exactly when the walk of the file does, and agrees with it when both pass."""
    rnd = random.Random(12)
    bad = tmp_path / "bad.db"
    spill = tmp_path / "spill"
    spill.mkdir()
    outcomes = {"both failed": 0, "both passed": 0}
    for name in ("mixed", "many", "large"):
        raw = snaps[name].read_bytes()[:-32]
        with BoltFile(snaps[name]) as db:
            ps, high = db.page_size, db.meta.pgid
        for _ in range(120):
            page = rnd.randrange(0, high)
            off = page * ps + (rnd.randrange(0, 96) if rnd.random() < 0.8 else rnd.randrange(0, ps))
            buf = bytearray(raw)
            buf[off] ^= 1 << rnd.randrange(8)
            bad.write_bytes(buf)
            try:
                r = verify_db(bad, skip_hash_check=True)
                walked: object = (r.status, r.pages, r.key_entries)
            except SnapshotCorrupt:
                walked = None
            try:
                streamed: object = stream(bytes(buf) + bytes(32), spill, seed=off)
            except SnapshotCorrupt:
                streamed = None
            assert streamed == walked, f"{name}: bit flip at {off} (page {page})"
            outcomes["both failed" if walked is None else "both passed"] += 1
    assert outcomes["both failed"] > 60 and outcomes["both passed"] > 60, outcomes


def test_a_short_stream_is_truncated(snaps: dict[str, Path], tmp_path: Path) -> None:
    data = snaps["many"].read_bytes()
    with pytest.raises(SnapshotCorrupt, match="truncated"):
        stream(data[: len(data) // 2], tmp_path, 1 << 20)
    with pytest.raises(SnapshotCorrupt, match="too small"):
        stream(data[:3000], tmp_path, 1000)


@pytest.mark.unit
def test_combine_is_the_crc_of_the_concatenation() -> None:
    rnd = random.Random(3)
    cache: dict[int, int] = {}
    for _ in range(200):
        a, b = rnd.randbytes(rnd.randrange(0, 5000)), rnd.randbytes(rnd.randrange(0, 3_000_000 if _ < 3 else 5000))
        assert combine(crc32c(a), crc32c(b), len(b), cache) == crc32c(a + b)


@pytest.mark.unit
def test_a_stream_that_failed_keeps_nothing(tmp_path: Path) -> None:
    """Garbage from the first byte: the meta pages fail, and nothing more of the stream is held."""
    check = StreamCheck(tmp_path / "summaries")
    try:
        for _ in range(64):
            check.feed(b"\xff" * (1 << 20))
        assert check.error is not None and not check.buf
        with pytest.raises(SnapshotCorrupt, match="meta page"):
            check.finish()
    finally:
        check.close()

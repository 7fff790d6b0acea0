"""The recoverable window: chains of segments written with the real encoder into a file:// repository, their
breaks (tampered, missing, overlapping, unreadable), and what a restore to a revision or a time would use."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from etcdwarden.format.names import BackupNames
from etcdwarden.format.receiver import STATE_NAME, ReceiverState, StateHolder, dump_state
from etcdwarden.format.segment import (
    Event,
    LeaseRecord,
    RevisionRecord,
    SegmentEncoder,
    SegmentError,
    SegmentManifest,
    dump_segment_manifest,
)
from etcdwarden.repository.base import Repository, open_repository
from etcdwarden.repository.window import NotRecoverable, Point, Target, read_segment, read_window, resolve
from tests.repository.fake import put_backup

pytestmark = pytest.mark.unit

B1, B2 = "2026-12-02_100000", "2026-12-02_110000"
T1 = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
T2 = dt.datetime(2026, 12, 2, 11, 0, tzinfo=dt.UTC)


def _t(base: dt.datetime, rev: int) -> dt.datetime:
    return base + dt.timedelta(seconds=rev)  # revision r of a chain was seen r seconds after its base


def _base(repo: Repository, ts: str, revision: int) -> str:
    doc = put_backup(repo, ts, revision=revision, resources=False)
    return str(doc["files"][BackupNames(ts).snapshot]["sha256"])


def _segment(repo: Repository, base: str, t0: dt.datetime, first: int, last: int, previous: str,
             closes: str | None = None, cluster: str = "cafe") -> SegmentManifest:
    enc = SegmentEncoder(first)
    data = enc.add(LeaseRecord("grant", 7, _t(t0, first), ttl=60))
    for r in range(first, last + 1):
        data += enc.add(RevisionRecord(r, _t(t0, r), (Event("put", b"/k/%d" % r, b"v", r, r, 1, 7),)))
    data += enc.finish()
    assert enc.first_time and enc.last_time
    names = BackupNames(base)
    m = SegmentManifest(base=base, cluster_id=cluster, file=names.segment(first), first_revision=first,
                        last_revision=last, revisions=enc.revisions, events=enc.events,
                        lease_records=enc.lease_records, first_time=enc.first_time, last_time=enc.last_time,
                        size=enc.size, sha256=enc.sha256, previous_sha256=previous, created_at=enc.last_time,
                        closes_chain=closes)
    repo.write_bytes(m.file, data)
    repo.write_bytes(m.name, dump_segment_manifest(m))
    return m


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return open_repository(tmp_path / "repo")


def _chain(repo: Repository, base: str, t0: dt.datetime, base_rev: int, *bounds: tuple[int, int]) -> \
        list[SegmentManifest]:
    prev = _base(repo, base, base_rev)
    out = []
    for first, last in bounds:
        out.append(_segment(repo, base, t0, first, last, prev))
        prev = out[-1].sha256
    return out


def test_clean_chain_and_revision_targets(repo: Repository) -> None:
    s1, s2 = _chain(repo, B1, T1, 100, (101, 110), (111, 120))
    w = read_window(repo, rehash=True)
    (c,) = w.chains
    assert c.broken is None and c.segments == (s1, s2)
    assert (w.earliest, w.latest) == (c.start, c.end)
    assert (c.start.revision, c.start.time, c.end.revision, c.end.time) == (100, T1, 120, _t(T1, 120))
    assert w.gaps == [] and w.problems == ()
    latest = resolve(repo, w)
    assert (latest.base.id, latest.stop_revision, latest.segments, latest.stop_time) == (B1, 120, (s1, s2), _t(T1, 120))
    assert resolve(repo, w, Target(revision=105)).segments == (s1,)
    assert resolve(repo, w, Target(revision=115)).revisions == 15
    at_base = resolve(repo, w, Target(revision=100))
    assert at_base.segments == () and at_base.stop_revision == 100
    for r in (99, 121):
        with pytest.raises(NotRecoverable, match=r"revision 100 \(.*\) \.\. revision 120"):
            resolve(repo, w, Target(revision=r))
    recs = list(read_segment(repo, s1))
    assert [r.revision for r in recs if isinstance(r, RevisionRecord)] == list(range(101, 111))


def test_time_targets_stop_at_the_last_revision_seen_at_or_before(repo: Repository) -> None:
    s1, s2 = _chain(repo, B1, T1, 100, (101, 110), (111, 120))
    w = read_window(repo)
    p = resolve(repo, w, Target(time=_t(T1, 113) + dt.timedelta(milliseconds=500)))  # inside s2: read its records
    assert (p.stop_revision, p.stop_time, p.segments) == (113, _t(T1, 113), (s1, s2))
    p = resolve(repo, w, Target(time=_t(T1, 110)))
    assert (p.stop_revision, p.segments) == (110, (s1,))
    p = resolve(repo, w, Target(time=_t(T1, 50)))  # after the base, before the first segment's first revision
    assert (p.stop_revision, p.segments) == (100, ())
    with pytest.raises(NotRecoverable, match="before the earliest full backup"):
        resolve(repo, w, Target(time=T1 - dt.timedelta(seconds=1)))
    with pytest.raises(NotRecoverable, match=r"after the latest recoverable point, revision 120"):
        resolve(repo, w, Target(time=_t(T1, 121)))
    # the receiver confirmed the cluster was still at 120 until later: the window's end time moves on
    confirmed = _t(T1, 200)
    state = ReceiverState(cluster_id="cafe", base=B1, revision=120, confirmed_at=confirmed, heartbeat_at=confirmed,
                          holder=StateHolder(host="h", pid=1, token="x", version="0"))
    repo.write_bytes(STATE_NAME, dump_state(state))
    w = read_window(repo)
    assert w.latest is not None and w.latest.time == confirmed and w.chains[0].receiving
    p = resolve(repo, w, Target(time=_t(T1, 150)))
    assert (p.stop_revision, p.stop_time) == (120, _t(T1, 120))


def test_tampered_segment_breaks_the_chain(repo: Repository) -> None:
    s1, s2, _ = _chain(repo, B1, T1, 100, (101, 110), (111, 120), (121, 130))
    path = repo.local_path(s2.file)
    assert path is not None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # same size: only a re-hash finds it
    path.write_bytes(bytes(data))
    assert read_window(repo).chains[0].broken is None
    c = read_window(repo, rehash=True).chains[0]
    assert c.broken is not None and c.broken.at == s2.name and "sha256" in c.broken.problem
    assert c.segments == (s1,) and c.end.revision == 110
    with pytest.raises(SegmentError, match="sha256"):
        list(read_segment(repo, s2))
    with pytest.raises(NotRecoverable, match=rf"breaks at {s2.name}.*last good point is revision 110"):
        resolve(repo, read_window(repo, rehash=True), Target(revision=125))
    assert resolve(repo, read_window(repo, rehash=True), Target(revision=110)).stop_revision == 110


def test_tampered_manifest_missing_and_overlapping_segments(repo: Repository) -> None:
    s1, s2, s3 = _chain(repo, B1, T1, 100, (101, 110), (111, 120), (121, 130))
    # a manifest rewritten with another previous_sha256: the hash chain does not link
    repo.write_bytes(s2.name, dump_segment_manifest(s2.model_copy(update={"previous_sha256": "0" * 64})))
    c = read_window(repo).chains[0]
    assert c.broken is not None and c.broken.at == s2.name and "previous_sha256" in c.broken.problem
    repo.write_bytes(s2.name, dump_segment_manifest(s2))
    assert read_window(repo).chains[0].end.revision == 130
    # the data file of a segment is missing
    repo.delete(s3.file)
    c = read_window(repo).chains[0]
    assert c.broken is not None and "missing" in c.broken.problem and c.end.revision == 120
    repo.delete(s3.name)
    # a whole segment is missing: the next one leaves a gap
    repo.delete(s2.name)
    repo.delete(s2.file)
    _segment(repo, B1, T1, 121, 130, s2.sha256)
    c = read_window(repo).chains[0]
    assert c.broken is not None and "gap" in c.broken.problem and c.end.revision == 110
    # an overlapping segment (another receiver's, say) starting inside s1
    repo.delete(BackupNames(B1).segment_manifest(121))
    _segment(repo, B1, T1, 105, 115, s1.sha256)
    c = read_window(repo).chains[0]
    assert c.broken is not None and "overlaps" in c.broken.problem and c.segments == (s1,)


def test_unreadable_manifest_and_foreign_cluster(repo: Repository) -> None:
    s1, s2 = _chain(repo, B1, T1, 100, (101, 110), (111, 120))
    repo.write_bytes(s2.name, b"{not json")
    c = read_window(repo).chains[0]
    assert c.broken is not None and c.broken.at == s2.name and "unreadable" in c.broken.problem
    assert c.end.revision == 110
    repo.delete(s2.name)
    repo.delete(s2.file)
    _segment(repo, B1, T1, 111, 120, s1.sha256, cluster="beef")
    c = read_window(repo).chains[0]
    assert c.broken is not None and "cluster beef" in c.broken.problem


def test_two_chains_merge_and_pick_the_last_base(repo: Repository) -> None:
    a1, a2 = _chain(repo, B1, T1, 100, (101, 110), (111, 120), )
    closing = _segment(repo, B1, T1, 121, 125, a2.sha256, closes="rotated")
    (b1,) = _chain(repo, B2, T2, 125, (126, 140))
    w = read_window(repo)
    assert [c.closed for c in w.chains] == ["rotated", None]
    (iv,) = w.intervals
    assert (iv.start.revision, iv.end.revision, iv.bases) == (100, 140, (B1, B2))
    p = resolve(repo, w, Target(revision=130))
    assert (p.base.id, p.segments, p.base_revision) == (B2, (b1,), 125)
    p = resolve(repo, w, Target(revision=125))  # the last full backup at or before the target: no replay
    assert (p.base.id, p.segments) == (B2, ())
    p = resolve(repo, w, Target(revision=115))
    assert (p.base.id, p.segments) == (B1, (a1, a2))
    p = resolve(repo, w, Target(time=_t(T1, 124)))
    assert (p.base.id, p.stop_revision, p.segments[-1]) == (B1, 124, closing)
    # B2's revision was seen (in B1's chain) long before B2's manifest was written: the window has no hole
    assert w.chains[1].start == closing_end(closing)
    p = resolve(repo, w, Target(time=T2 - dt.timedelta(seconds=1)))
    assert (p.base.id, p.stop_revision, p.segments) == (B2, 125, ())
    assert resolve(repo, w).stop_revision == 140


def closing_end(s: SegmentManifest) -> Point:
    return Point(s.last_revision, s.last_time)


def test_gap_between_chains_and_orphan_segments(repo: Repository) -> None:
    _chain(repo, B1, T1, 100, (101, 110))
    _chain(repo, B2, T2, 150, (151, 160))
    put_backup(repo, "2026-12-02_120000", revision=170, manifest=False)
    _segment(repo, "2026-12-02_120000", T2, 171, 175, "0" * 64)
    w = read_window(repo)
    ((after, before),) = w.gaps
    assert (after.revision, before.revision) == (110, 150)
    assert any("2026-12-02_120000" in p and "incomplete" in p for p in w.problems)
    with pytest.raises(NotRecoverable, match=r"revision 100 .*\.\. revision 110.*revision 150"):
        resolve(repo, w, Target(revision=130))
    with pytest.raises(NotRecoverable, match="gap"):
        resolve(repo, w, Target(time=_t(T1, 200)))


def test_backups_list_show_at_and_prune_keep_the_chain_with_its_backup(repo: Repository, tmp_path: Path) -> None:
    import json

    from tests.cli_helpers import cli

    where = str(tmp_path / "repo")
    put_backup(repo, "2026-12-02_090000", revision=90, resources=False)  # no chain
    a1, a2 = _chain(repo, B1, T1, 100, (101, 110), (111, 120))
    listed = cli("backups", "list", where)
    assert listed.code == 0, listed.err
    assert "Recoverable window" in listed.out and "earliest: revision 90" in listed.out
    assert "latest:   revision 120" in listed.out
    doc = json.loads(cli("backups", "list", where, "-w", "json").out)
    assert doc["window"]["latest"]["revision"] == 120 and doc["window"]["chains"][1]["segments"] == 2
    at = cli("backups", "show", where, "--at", "115")
    assert at.code == 0 and "restores to:     revision 115" in at.out and a2.file in at.out, at.err
    at = json.loads(cli("backups", "show", where, "--at", _t(T1, 105).isoformat(), "-w", "json").out)
    assert at["stop"]["revision"] == 105 and at["base"] == B1 and at["segments"] == [repo.where(a1.file)]
    assert "after the latest recoverable point, revision 120" in cli("backups", "show", where, "--at", "121").err
    assert cli("backups", "show", where).code == 2  # an ID or --at
    shown = cli("backups", "show", where, B1)
    assert "chain:           2 segment(s), revision 100" in shown.out
    # the base is older than an hour, its segments were written just now: --keep-within keeps it, chain and all
    pruned = cli("backups", "prune", where, "--keep-within", "1h", "-w", "json")
    assert pruned.code == 0, pruned.err
    names = {o.name for o in repo.list()}
    assert a1.name in names and BackupNames(B1).manifest in names
    assert BackupNames("2026-12-02_090000").manifest not in names
    cli("backups", "delete", where, B1, "--force")
    assert not [n for n in (o.name for o in repo.list()) if B1 in n]  # deleted with every segment of its chain


def test_only_and_the_manifest_cache(repo: Repository) -> None:
    from etcdwarden.repository.window import ManifestCache

    _chain(repo, B1, T1, 100, (101, 110))
    (b1,) = _chain(repo, B2, T2, 150, (151, 160))
    assert [c.base for c in read_window(repo, only={B2}).chains] == [B2]
    cache: ManifestCache = {}
    first = read_window(repo, cache=cache)
    assert set(cache) == {BackupNames(B1).segment_manifest(101), b1.name}
    # a cached manifest is used while its size and time are unchanged; a rewritten one is read again
    repo.write_bytes(b1.name, dump_segment_manifest(b1.model_copy(update={"closes_chain": "rotated"})))
    again = read_window(repo, cache=cache)
    assert again.chains[1].closed == "rotated" and first.chains[1].closed is None
    repo.delete(b1.name)
    read_window(repo, cache=cache)
    assert b1.name not in cache  # forgotten once deleted


@pytest.mark.parametrize("argv, message", [
    (["--segment-seconds", "0"], "must be more than 0"),
    (["--segment-seconds", "soon"], "segment-seconds"),
    (["--segment-bytes", "lots"], "segment-bytes"),
    (["--lease", "2s"], "lease must last at least 3s"),
])
def test_receive_bad_options_are_usage_errors(tmp_path: Path, argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli_helpers import cli

    r = cli("receive", str(tmp_path / "repo"), "--endpoints", "127.0.0.1:1", *argv)
    err = r.err + capsys.readouterr().err  # (argparse writes its own errors to stderr)
    assert r.code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "repo").exists()  # refused before anything was created

"""``etcdwarden receive`` on real etcd: every revision captured exactly once across a SIGKILL, the open segment
written on SIGTERM, a compaction that outran a stopped receiver reported as a gap with a new chain, and a
second receiver refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import open_repository
from etcdwarden.repository.window import read_window
from tests.backup.receiving import (
    captured,
    current_revision,
    history,
    running,
    start_receiver,
    stop,
    wait_receiving,
    workload,
)


@pytest.mark.slow
def test_workload_sigkill_and_restart_no_gap_no_overlap(etcd3: LocalCluster, tmp_path: Path) -> None:
    eps = etcd3.endpoints
    repo = open_repository(tmp_path / "repo")
    workload(eps, 30, "before")
    proc = start_receiver(eps, str(tmp_path / "repo"))
    wait_receiving(repo, proc)
    during = threading.Thread(target=workload, args=(eps, 300, "during", 2))
    during.start()
    time.sleep(1.5)
    proc.kill()  # SIGKILL while the workload runs: whatever was not durable yet is captured again
    proc.wait()
    during.join()
    workload(eps, 60, "stopped", 3)  # while no receiver runs
    proc = start_receiver(eps, str(tmp_path / "repo"))
    end = workload(eps, 100, "after", 4)
    wait_receiving(repo, proc, end)
    code, err = stop(proc)
    assert code == 143 and "resuming the chain" in err, err
    (chain,) = read_window(repo, rehash=True).chains
    assert chain.broken is None and chain.end.revision == end
    revs, leases, base = captured(repo)
    assert [r for r, _ in revs] == list(range(base + 1, end + 1))  # every revision exactly once, in order
    assert revs == history(eps, base + 1, end)  # and each one as the cluster's own watch reports it
    attached = {e.lease for _, evs in revs for e in evs if e.lease}
    granted = {rec.id: rec.ttl for rec in leases if rec.op == "grant"}
    # a lease granted and revoked while no receiver ran is met only on its keys' events: its TTL is unknown (0)
    assert attached and attached <= set(granted) and set(granted.values()) <= {0, 60, 120, 300}
    assert sum(1 for ttl in granted.values() if ttl) >= 3
    assert any(rec.op == "revoke" for rec in leases)


def test_sigterm_writes_the_open_segment_and_idle_time_advances(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = open_repository(tmp_path / "repo")
    proc = start_receiver(etcd1.endpoints, str(tmp_path / "repo"), "--segment-seconds", "600")
    wait_receiving(repo, proc)
    end = workload(etcd1.endpoints, 20, "x")
    time.sleep(2.0)  # received, not yet written: the segment closes only on its 600 s or on the signal
    assert not read_window(repo).chains[0].segments
    code, err = stop(proc)
    assert code == 143, err
    (chain,) = read_window(repo, rehash=True).chains
    assert chain.end.revision == end and len(chain.segments) == 1
    assert chain.end.time is not None and chain.end.time > chain.segments[-1].last_time  # confirmed idle after it


def test_compaction_outruns_a_stopped_receiver(etcd1: LocalCluster, tmp_path: Path) -> None:
    eps = etcd1.endpoints
    repo = open_repository(tmp_path / "repo")
    proc = start_receiver(eps, str(tmp_path / "repo"))
    wait_receiving(repo, proc)
    first = workload(eps, 10, "a")
    wait_receiving(repo, proc, first)
    assert stop(proc)[0] == 143
    time.sleep(1.1)  # the next full backup needs another second for its ID
    workload(eps, 10, "b")

    async def delete_and_compact() -> int:
        async with EtcdClient(ClientConfig.from_strings(eps)) as c:
            await c.put(b"/gone", b"1")
            rev = (await c.delete(b"/gone")).header.revision
            await c.compact(rev)  # removes the trailing delete's tombstone: the snapshot's last key is older
            return int(rev)

    async def put() -> int:
        async with EtcdClient(ClientConfig.from_strings(eps)) as c:
            return int((await c.put(b"/after", b"1")).header.revision)

    lost = asyncio.run(delete_and_compact())
    proc = start_receiver(eps, str(tmp_path / "repo"))
    wait_receiving(repo, proc, lost)
    after = asyncio.run(put())
    wait_receiving(repo, proc, after)
    code, err = stop(proc)
    assert code == 143 and f"GAP: the revisions after {first} were compacted (up to {lost})" in err, err
    w = read_window(repo)
    old, new = w.chains
    assert old.closed == "compacted" and old.end.revision == first
    assert new.base_revision == lost and new.broken is None and new.end.revision == after  # the store's revision
    assert [(a.revision, b.revision) for a, b in w.gaps] == [(first, lost)]


def test_a_second_receiver_is_refused(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = open_repository(tmp_path / "repo")
    first = start_receiver(etcd1.endpoints, str(tmp_path / "repo"))
    try:
        wait_receiving(repo, first)
        second = start_receiver(etcd1.endpoints, str(tmp_path / "repo"))
        _, err = second.communicate(timeout=60)
        assert second.returncode == 3 and "another receiver" in err, err
    finally:
        code, err = stop(first, signal.SIGINT)
    assert code == 130, err
    assert read_window(repo).state is not None and read_window(repo).state.stopped  # type: ignore[union-attr]
    assert current_revision(etcd1.endpoints) >= 1


def test_rotation_and_a_member_lost_keep_the_window_whole(etcd3: LocalCluster, tmp_path: Path) -> None:
    eps = etcd3.endpoints
    repo = open_repository(tmp_path / "repo")
    proc = start_receiver(eps, str(tmp_path / "repo"), "--full-every", "3s")
    wait_receiving(repo, proc)
    workload(eps[1:], 40, "one")
    etcd3.stop_member(etcd3.members[0].name, kill=True)  # the member the watch is on (the first endpoint)
    end = 0
    deadline = time.monotonic() + 60
    while len(read_window(repo).chains) < 3 and time.monotonic() < deadline:
        end = workload(eps[1:], 20, "two")
        time.sleep(0.5)
    wait_receiving(repo, proc, end)
    code, err = stop(proc)
    assert code == 143 and "reconnecting" in err and "closed at revision" in err, err
    w = read_window(repo, rehash=True)
    assert len(w.chains) >= 3 and all(c.broken is None for c in w.chains)
    assert all(c.closed == ("rotated" if c.segments else None) for c in w.chains[:-1]) and not w.chains[-1].closed
    (interval,) = w.intervals  # each chain reaches the next one's base: no gap
    assert interval.end.revision == end


def test_a_repository_of_encrypted_backups_is_refused(etcd1: LocalCluster, tmp_path: Path) -> None:
    """Segments are not encrypted: beside this cluster's age-encrypted backups they would store every new value
    in clear. Refused (exit 3, nothing written) unless --force=plaintext."""
    import pyrage

    from tests.cli_helpers import cli

    repo = tmp_path / "repo"
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    r = cli("backup", str(repo), "--endpoints", etcd1.endpoints[0], "--encrypt-to", recipient)
    assert r.code == 0, r.err
    before = sorted(p.name for p in repo.iterdir())
    proc = start_receiver(etcd1.endpoints, str(repo))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "encrypted backups" in err and "--force=plaintext" in err, err
    assert sorted(p.name for p in repo.iterdir()) == before
    proc = start_receiver(etcd1.endpoints, str(repo), "--force=plaintext")
    try:
        wait_receiving(open_repository(repo), proc)
    finally:
        code, err = stop(proc, signal.SIGINT)
    assert code == 130, err


# the receiver, its full backups recorded: "start N", then "end N" or "stop N" (cancelled or failed); the first
# rotation's backup (the second call) waits until the test creates "release" beside the record
_RECORDED = r'''
import asyncio, sys
from pathlib import Path
import etcdwarden.backup.receive as receive
record = Path(sys.argv.pop(1))
release = record.with_name("release")
real = receive.take_backup
calls = 0
def note(line):
    with record.open("a") as f:
        f.write(line + "\n")
async def recorded(*args, **kwargs):
    global calls
    calls += 1
    n = calls
    note(f"start {n}")
    try:
        while n == 2 and not release.exists():
            await asyncio.sleep(0.05)
        result = await real(*args, **kwargs)
    except BaseException:
        note(f"stop {n}")
        raise
    note(f"end {n}")
    return result
receive.take_backup = recorded
from etcdwarden.cli.entry import main
main()
'''


def test_a_gap_found_while_a_rotation_runs_takes_one_full_backup_at_a_time(etcd3: LocalCluster,
                                                                           tmp_path: Path) -> None:
    """The watch's member dies while the next chain's full backup runs, and the revisions after the last one
    received were compacted meanwhile: the rotation's backup is stopped before the gap's is taken (two full
    backups at once would double the load on etcd, and wait on each other's repository lock)."""
    from tests.restore.helpers import statuses

    sts = statuses(etcd3)
    watched = next(i for i, st in enumerate(sts) if st.leader != st.header.member_id)  # a follower
    others = [u for i, u in enumerate(etcd3.endpoints) if i != watched]
    record = tmp_path / "calls"
    repo_dir = tmp_path / "repo"
    with running([sys.executable, "-c", _RECORDED, str(record), "--endpoints",
                  ",".join([etcd3.endpoints[watched], *others]), "receive", str(repo_dir),
                  "--segment-seconds", "0.5", "--full-every", "2s"]) as proc:
        repo = open_repository(repo_dir)
        wait_receiving(repo, proc)

        def lines() -> list[str]:
            return record.read_text().splitlines() if record.exists() else []

        deadline = time.monotonic() + 60
        while "start 2" not in lines() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "start 2" in lines(), lines()
        member = etcd3.members[watched]
        assert member.process is not None
        os.kill(member.process.pid, signal.SIGSTOP)  # the watch stalls: nothing more reaches the receiver
        end = workload(others, 12, "gap")

        async def compact() -> None:
            async with EtcdClient(ClientConfig.from_strings(others)) as c:
                await c.compact(end)

        asyncio.run(compact())
        etcd3.stop_member(member.name, kill=True)  # the watch fails; reopened on another member: compacted
        while "end 3" not in lines() and time.monotonic() < deadline + 60:
            time.sleep(0.1)
        (tmp_path / "release").touch()
        code, err = stop(proc)
    assert code == 143 and "GAP: the revisions after" in err, err
    active: set[str] = set()
    for line in lines():
        what, n = line.split()
        if what == "start":
            assert not active, f"full backup {n} started while {active} ran: {lines()}"
            active.add(n)
        else:
            active.discard(n)
    assert lines()[:4] == ["start 1", "end 1", "start 2", "stop 2"] and "end 3" in lines(), lines()


# the receiver, writing each segment 1.5 s slower than it is (a slow object store): closed segments queue up
_SLOW_STORE = r'''
import sys, time
import etcdwarden.backup.receive as receive
real = receive.write_segment
def slow(*args, **kwargs):
    time.sleep(1.5)
    return real(*args, **kwargs)
receive.write_segment = slow
from etcdwarden.cli.entry import main
main()
'''


@pytest.mark.slow
def test_the_lease_is_renewed_while_segments_queue_up(etcd1: LocalCluster, tmp_path: Path) -> None:
    """A store slower than the segments close: the queue never empties, and the receiver still renews its lease
    on time (a lease left to expire lets another receiver take over a running one)."""
    from etcdwarden.repository.window import read_state

    repo_dir = tmp_path / "repo"
    with running([sys.executable, "-c", _SLOW_STORE, "--endpoints", etcd1.endpoints[0], "receive",
                  str(repo_dir), "--segment-seconds", "0.3", "--lease", "3s"]) as proc:
        repo = open_repository(repo_dir)
        wait_receiving(repo, proc)
        done = threading.Event()

        def writes() -> None:
            n = 0
            while not done.is_set():
                workload(etcd1.endpoints, 5, "busy", seed=n)
                n += 1

        writer = threading.Thread(target=writes)
        writer.start()
        oldest = 0.0
        try:
            end = time.monotonic() + 10
            while time.monotonic() < end:
                st = read_state(repo)
                assert st is not None
                oldest = max(oldest, (dt.datetime.now(dt.UTC) - st.heartbeat_at).total_seconds())
                time.sleep(0.2)
        finally:
            done.set()
            writer.join()
        durable = read_state(repo)
        code, err = stop(proc)
    assert code == 143, err
    assert durable is not None and durable.revision > 0, "segments were written meanwhile"
    assert oldest < 3, f"the lease (3 s) went {oldest:.1f} s without a heartbeat"  # (renewed every second)

"""End to end (issue 13): the real ``etcdwarden receive`` on a 3-member cluster, SIGKILLed twice and the etcd
leader killed once during the workload; then ``restore member`` at random revisions and at times inside the
window, each compared with ``etcdctl get "" --prefix --rev R -w json`` of the source."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from etcdwarden.format.segment import RevisionRecord
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import open_repository
from etcdwarden.repository.window import read_segment, read_window
from tests.backup.receiving import current_revision, start_receiver, stop, wait_receiving, workload
from tests.cli_helpers import cli
from tests.restore.helpers import statuses
from tests.restore.test_pitr import kvs_at, restored_state

pytestmark = pytest.mark.slow


def _kill_leader(cluster: LocalCluster) -> str:
    for m, st in zip(cluster.members, statuses(cluster), strict=True):
        if st.leader == st.header.member_id:
            cluster.stop_member(m.name, kill=True)
            return m.name
    raise AssertionError("no leader")


def test_receive_then_restore_at_random_points(etcd3: LocalCluster, tmp_path: Path) -> None:
    eps = etcd3.endpoints
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    repo = open_repository(repo_dir)
    proc = start_receiver(eps, str(repo_dir))
    wait_receiving(repo, proc)
    workload(eps, 50, "a", seed=1)
    stop(proc, signal.SIGKILL)  # a crash: the next run resumes after the last durable segment
    proc = start_receiver(eps, str(repo_dir))
    wait_receiving(repo, proc)
    workload(eps, 50, "b", seed=2)
    leader = _kill_leader(etcd3)
    workload([ep for m, ep in zip(etcd3.members, eps, strict=True) if m.name != leader], 50, "c", seed=3)
    etcd3.start_member(leader)
    etcd3.wait_healthy()
    stop(proc, signal.SIGKILL)
    proc = start_receiver(eps, str(repo_dir))
    wait_receiving(repo, proc)
    workload(eps, 50, "d", seed=4)
    end = current_revision(eps)
    wait_receiving(repo, proc, end)
    code, err = stop(proc)
    assert code == 143, err  # SIGTERM: the open segment written, then the conventional exit

    window = read_window(repo)
    assert len(window.intervals) == 1 and not window.gaps
    chain = window.chains[-1]
    rnd = random.Random(13)
    revisions = sorted(rnd.sample(range(chain.base_revision + 1, end + 1), 5))
    seen = {rec.revision: rec.time for s in chain.segments for rec in read_segment(repo, s)
            if isinstance(rec, RevisionRecord)}
    times = [seen[r] for r in sorted(rnd.sample(sorted(seen), 2))]
    expected = {r: kvs_at(eps[0], r) for r in revisions}
    targets: list[tuple[list[str], int]] = [(["--to-revision", str(r)], r) for r in revisions]
    for t in times:
        r = max(x for x, when in seen.items() if when <= t)
        expected[r] = kvs_at(eps[0], r)
        targets.append((["--to-time", t.isoformat()], r))
    for i, (flags, r) in enumerate(targets):
        d = tmp_path / f"d{i}"
        res = cli("restore", "member", str(repo_dir), "--data-dir", str(d), "--name", "m0",
                  "--initial-cluster", "m0=http://127.0.0.1:2380", *flags)
        assert res.code == 0, res.err
        served, kvs, _ = restored_state(d, r, tmp_path / f"w{i}")
        assert served == r, flags
        assert kvs == expected[r], flags

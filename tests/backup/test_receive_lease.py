"""The receiver's lease: its state object is written by more than one thread of one receiver."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from etcdwarden.backup.receive_lease import ReceiverLease
from etcdwarden.format.receiver import STATE_NAME, load_state
from etcdwarden.repository.base import open_repository

pytestmark = pytest.mark.unit


def test_concurrent_heartbeats_and_release_never_collide(tmp_path: Path) -> None:
    """A heartbeat still running in a worker thread (its task was cancelled at shutdown: the thread goes on)
    while the shutdown writes the progress and releases: every write must land (the demo's receiver died of
    ``….part: No such file or directory`` when two writes of the state shared one temporary name)."""
    repo = open_repository(tmp_path / "repo")
    errors: list[BaseException] = []
    with ReceiverLease(repo, "c0ffee") as lease:
        start = threading.Barrier(3)

        def beat(n: int) -> None:
            start.wait()
            try:
                for i in range(150):
                    lease.heartbeat(None, n * 1000 + i, None)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=beat, args=(n,)) for n in range(1, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    state = load_state(repo.read_bytes(STATE_NAME))
    assert state.stopped and state.holder.token == lease.holder.token
    assert not [p.name for p in (tmp_path / "repo").iterdir() if p.name.endswith(".part")]
    repo.close()


def test_a_late_heartbeat_never_moves_the_progress_back(tmp_path: Path) -> None:
    repo = open_repository(tmp_path / "repo")
    base = "2026-12-02_101500"
    t1 = dt.datetime(2026, 12, 2, 10, 20, tzinfo=dt.UTC)
    t2 = t1 + dt.timedelta(seconds=5)
    with ReceiverLease(repo, "c0ffee") as lease:
        lease.heartbeat(base, 50, t2)
        lease.heartbeat(base, 40, t1)  # the late one
        assert (lease.state.revision, lease.state.confirmed_at) == (50, t2)
        lease.heartbeat(base, 50, t1)
        assert lease.state.confirmed_at == t2
        lease.heartbeat("2026-12-02_111500", 7, None)  # a new chain starts over
        assert (lease.state.base, lease.state.revision) == ("2026-12-02_111500", 7)
    repo.close()

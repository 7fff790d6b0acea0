"""NOSPACE recovery and Defragment timeouts, against real etcd."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.defrag import DefragOptions, Outcome, rolling_defrag
from etcdwarden.errors import NoSpace
from etcdwarden.etcd.client import EtcdClient, prefix_end
from etcdwarden.etcd.endpoints import Endpoint
from etcdwarden.local.cluster import LocalCluster, LocalMember
from tests.cli_helpers import cli
from tests.conftest import _start
from tests.defrag.helpers import client, fill_to_nospace, report, rows, run, statuses

QUOTA = 16 * 1024 * 1024


@pytest.fixture
def small_quota(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    c = _start(request, tmp_path / "quota", 3, extra=("--quota-backend-bytes", str(QUOTA)))
    yield c
    c.stop()


def test_nospace_is_cleared_by_compact_defrag_disarm(small_quota: LocalCluster) -> None:
    c = small_quota
    fill_to_nospace(c)

    async def put() -> None:
        async with client(c) as cl:
            await cl.put(b"/after", b"x")

    with pytest.raises(NoSpace):
        run(put())

    async def delete_all() -> None:
        async with client(c) as cl:
            await cl.delete(b"/big", prefix_end(b"/big"))

    run(delete_all())  # deletes are allowed under NOSPACE; the file keeps its size
    assert all(s.dbSize >= QUOTA // 2 for s in statuses(c).values())
    assert any("NOSPACE" in e for s in statuses(c).values() for e in s.errors)

    # the defrag compacts first (--compact), shrinks every member, then disarms NOSPACE
    r = cli("defrag", "--cluster", "--compact", "--db-quota-bytes", "16MiB", "--endpoints", c.endpoints[0],
            "--wait", "0s", "-w", "json")
    assert r.code == 0, r.err
    data = report(r)
    assert data["compaction"]["revision"] is not None
    assert {a["alarm"] for a in data["alarms"]["before"]} == {"NOSPACE"}
    assert {a["alarm"] for a in data["alarms"]["disarmed"]} == {"NOSPACE"}
    assert data["alarms"]["left"] == []
    assert data["dbQuota"] == QUOTA
    for m in rows(data):
        assert m["result"] == "defragmented"
        assert m["dbSizeAfter"] < QUOTA // 4
    assert all(not s.errors for s in statuses(c).values())
    run(put())  # writes are accepted again


def test_nospace_left_armed_when_a_member_is_still_too_big(small_quota: LocalCluster) -> None:
    c = small_quota
    fill_to_nospace(c)
    # nothing deleted or compacted: the files stay well above 10 % of the quota after defragmentation
    r = cli("defrag", "--cluster", "--db-quota-bytes", "16MiB", "--disarm-threshold", "0.1",
            "--endpoints", c.endpoints[0], "--wait", "0s", "-w", "json")
    assert r.code == 1
    data = report(r)
    assert data["success"] is False
    assert data["alarms"]["disarmed"] == []
    assert {a["alarm"] for a in data["alarms"]["left"]} == {"NOSPACE"}
    assert any("NOSPACE left armed" in n for n in data["notes"])
    assert "NOSPACE alarm still active" in r.err


class _Freezer:
    """Wraps ``EtcdClient.defragment``: SIGSTOPs the target member's etcd just before the call."""

    def __init__(self, cluster: LocalCluster, resume_after: float | None = None) -> None:
        self.cluster = cluster
        self.resume_after = resume_after
        self.calls: list[str] = []
        self.frozen: LocalMember | None = None
        self.original = EtcdClient.defragment

    def member(self, ep: Endpoint) -> LocalMember:
        return next(m for m in self.cluster.members if m.client_port == ep.port)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def defragment(client: EtcdClient, ep: Endpoint, timeout: float | None = None) -> None:
            await self.call(client, ep, timeout)

        monkeypatch.setattr(EtcdClient, "defragment", defragment)

    async def call(self, client: EtcdClient, ep: Endpoint, timeout: float | None) -> None:
        self.calls.append(ep.raw)
        if self.frozen is None:
            self.frozen = self.member(ep)
            assert self.frozen.pid is not None
            os.kill(self.frozen.pid, signal.SIGSTOP)
            if self.resume_after is not None:
                threading.Timer(self.resume_after, self.resume).start()
        await self.original(client, ep, timeout)

    def resume(self) -> None:
        if self.frozen is not None and self.frozen.pid is not None:
            os.kill(self.frozen.pid, signal.SIGCONT)


def test_timeout_is_reported_not_retried_and_stops(etcd3: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    freezer = _Freezer(etcd3)
    freezer.install(monkeypatch)
    try:
        r = cli("defrag", "--cluster", "--endpoints", etcd3.endpoints[0], "--wait", "0s",
                "--command-timeout", "1s", "-w", "json")
    finally:
        freezer.resume()
    assert r.code == 1
    data = report(r)
    members = rows(data)
    assert freezer.frozen is not None
    assert members[0]["endpoint"] == freezer.frozen.client_url
    assert members[0]["result"] == "timed out"
    assert "not retried" in members[0]["detail"]
    assert 0.9 <= members[0]["took"] < 5
    assert [m["result"] for m in members[1:]] == ["not run", "not run"]
    assert freezer.calls == [freezer.frozen.client_url]  # one Defragment call in all: no retry
    assert "pass --continue-on-error" in data["stoppedReason"]
    assert "timed out" in r.err


def test_continue_on_error_waits_for_the_member_then_goes_on(etcd3: LocalCluster,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    freezer = _Freezer(etcd3, resume_after=2.5)
    freezer.install(monkeypatch)
    events: list[str] = []

    async def go() -> list[tuple[str, Outcome]]:
        async with client(etcd3) as c:
            opts = DefragOptions(cluster=True, wait=0.0, defrag_timeout=1.0, recover_timeout=20.0,
                                 continue_on_error=True, on_event=lambda e: events.append(e.kind))
            rep = await rolling_defrag(c, opts)
            assert not rep.ok and rep.stopped_reason is None
            return [(m.endpoint, m.outcome) for m in rep.members]

    try:
        results = run(go())
    finally:
        freezer.resume()
    assert freezer.frozen is not None
    assert results[0] == (freezer.frozen.client_url, Outcome.TIMED_OUT)
    assert [o for _, o in results[1:]] == [Outcome.DEFRAGMENTED, Outcome.DEFRAGMENTED]
    # the frozen member was waited for (recovered) before the next Defragment, and never retried
    assert events.index("recovered") < events.index("defragmented")
    assert freezer.calls.count(freezer.frozen.client_url) == 1
    assert len(freezer.calls) == 3

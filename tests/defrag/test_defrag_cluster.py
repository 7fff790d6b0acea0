"""``defrag`` against real 3-member etcd clusters: order, leader handling, rules, dry run, refusals."""

from __future__ import annotations

import asyncio

import pytest

from etcdwarden.errors import EtcdError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.defrag.helpers import client, fragment, leader_url, report, rows, run, statuses

FAST = ("--wait", "0s", "--dial-timeout", "1s")


def test_cluster_defrag_shrinks_every_member_leader_last(etcd3: LocalCluster) -> None:
    fragment(etcd3)
    before = statuses(etcd3)
    leader = leader_url(etcd3)
    assert all(s.dbSize > 5_000_000 for s in before.values())

    r = cli("defrag", "--cluster", "--endpoints", etcd3.endpoints[0], "-w", "json", *FAST)
    assert r.code == 0, r.err
    data = report(r)
    assert data["success"] is True
    members = rows(data)
    assert sorted(m["endpoint"] for m in members) == sorted(etcd3.endpoints)
    assert [m["result"] for m in members] == ["defragmented"] * 3
    # the leader comes last, and only the leader was leader
    assert members[-1]["endpoint"] == leader
    assert [m["wasLeader"] for m in members] == [False, False, True]
    after = statuses(etcd3)
    for m in members:
        ep = m["endpoint"]
        assert m["dbSizeBefore"] == before[ep].dbSize
        assert m["dbSizeAfter"] < m["dbSizeBefore"] // 10  # almost everything was free pages
        assert after[ep].dbSize < before[ep].dbSize // 10  # checked independently of the report
        assert m["took"] is not None and m["took"] >= 0
    # the progress on stderr shows one member at a time, each recovered before the next
    assert r.err.count("defragmenting") == 3
    assert r.err.count("healthy, applied index") == 3


def test_table_output(etcd3: LocalCluster) -> None:
    fragment(etcd3, count=1000)
    r = cli("defrag", "--endpoints", ",".join(etcd3.endpoints), *FAST)
    assert r.code == 0, r.err
    header = r.out.splitlines()[1]
    for col in ("ENDPOINT", "WAS LEADER", "DB SIZE BEFORE", "DB SIZE AFTER", "IN USE", "TOOK", "RESULT"):
        assert col in header
    table_rows = [ln for ln in r.out.splitlines() if ln.startswith("|")][1:]
    assert len(table_rows) == 3
    assert table_rows[-1].split("|")[3].strip() == "true"  # WAS LEADER of the last row
    assert "The defragmentation is successful." in r.err


def test_move_leader_moves_leadership_before_the_old_leader(etcd3: LocalCluster) -> None:
    fragment(etcd3)
    old_leader = leader_url(etcd3)
    old_id = statuses(etcd3)[old_leader].header.member_id

    r = cli("defrag", "--cluster", "--move-leader", "--endpoints", etcd3.endpoints[0], "-w", "json", *FAST)
    assert r.code == 0, r.err
    data = report(r)
    members = rows(data)
    assert [m["result"] for m in members] == ["defragmented"] * 3
    last = members[-1]
    assert last["endpoint"] == old_leader and last["wasLeader"] is True
    # when its Defragment was sent, another member led: one that had already been defragmented
    assert last["leaderAtDefrag"] not in ("", f"{old_id:x}")
    assert last["leaderAtDefrag"] in {m["memberID"] for m in members[:-1]}
    assert data["leaderMoves"] == [{"from": f"{old_id:x}", "to": last["leaderAtDefrag"],
                                    "took": data["leaderMoves"][0]["took"]}]
    assert "leadership moved to" in last["detail"]
    assert leader_url(etcd3) != old_leader
    assert all(m["dbSizeAfter"] < m["dbSizeBefore"] for m in members)


def test_rule_skips_members_that_do_not_match(etcd3: LocalCluster) -> None:
    fragment(etcd3)
    # --auto (OpenShift's rule) needs >= 100 MiB files: nothing here qualifies, nothing is touched
    before = statuses(etcd3)
    r = cli("defrag", "--cluster", "--auto", "--endpoints", etcd3.endpoints[0], "-w", "json", *FAST)
    assert r.code == 0, r.err
    assert [m["result"] for m in rows(report(r))] == ["skipped"] * 3
    assert all(m["ruleMatched"] is False for m in rows(report(r)))
    assert {ep: s.dbSize for ep, s in statuses(etcd3).items()} == {ep: s.dbSize for ep, s in before.items()}

    # defragment one member by hand: its fragmentation drops to ~0, so the rule skips it only
    done = etcd3.endpoints[1]

    async def defrag_one() -> None:
        async with client(etcd3) as c:
            await c.defragment(c.endpoint(done))

    run(defrag_one())
    r = cli("defrag", "--cluster", "--rule", "fragmentation > 0.3 && dbSizeFree > 1MiB",
            "--endpoints", etcd3.endpoints[0], "-w", "json", *FAST)
    assert r.code == 0, r.err
    by_ep = {m["endpoint"]: m for m in rows(report(r))}
    assert by_ep[done]["result"] == "skipped" and by_ep[done]["ruleMatched"] is False
    assert "rule is false" in by_ep[done]["detail"]
    for ep in etcd3.endpoints:
        if ep != done:
            assert by_ep[ep]["result"] == "defragmented" and by_ep[ep]["ruleMatched"] is True
            assert by_ep[ep]["dbSizeAfter"] < by_ep[ep]["dbSizeBefore"]


def test_dry_run_changes_nothing(etcd3: LocalCluster) -> None:
    async def write_and_delete() -> int:
        async with client(etcd3) as c:
            first = await c.put(b"/dry/key", b"v1")
            await c.put(b"/dry/key", b"v2")
            await c.delete(b"/dry/key")
            return int(first.header.revision)

    fragment(etcd3)
    old_rev = run(write_and_delete())
    before = statuses(etcd3)
    r = cli("defrag", "--cluster", "--compact", "--move-leader", "--dry-run", "--endpoints", etcd3.endpoints[0],
            "-w", "json", *FAST)
    assert r.code == 0, r.err
    data = report(r)
    assert data["dryRun"] is True
    members = rows(data)
    assert [m["result"] for m in members] == ["would defragment"] * 3
    assert "would move leadership" in members[-1]["detail"]
    assert data["compaction"]["revision"] is None and data["leaderMoves"] == []
    assert any("would compact" in n for n in data["notes"])
    after = statuses(etcd3)
    for ep in etcd3.endpoints:
        assert after[ep].dbSize == before[ep].dbSize
        assert after[ep].leader == before[ep].leader
    assert "defragmenting" not in r.err

    async def old_value() -> bytes:  # history was not compacted: the old revision is still readable
        async with client(etcd3) as c:
            resp = await c.range(pb.RangeRequest(key=b"/dry/key", revision=old_rev))
            return bytes(resp.kvs[0].value)

    assert run(old_value()) == b"v1"


def test_member_down_is_refused_unless_forced(etcd3: LocalCluster) -> None:
    fragment(etcd3, count=1000)
    etcd3.stop_member("m3")
    r = cli("defrag", "--cluster", "--endpoints", etcd3.endpoints[0], *FAST)
    assert r.code == 3, r.err
    assert "m3" in r.err and "unhealthy" in r.err and "--force" in r.err
    assert "defragmenting" not in r.err

    # forced: the two live members are defragmented, the dead one is reported, the exit code says so
    r = cli("defrag", "--cluster", "--force", "--endpoints", etcd3.endpoints[0], "-w", "json", *FAST)
    assert r.code == 1
    by_ep = {m["endpoint"]: m for m in rows(report(r))}
    assert by_ep[etcd3.member("m3").client_url]["result"] == "unreachable"
    assert sorted(m["result"] for m in by_ep.values()) == ["defragmented", "defragmented", "unreachable"]
    assert any("went on despite (--force)" in n for n in report(r)["notes"])


def test_corrupt_alarm_is_refused_nospace_is_not(etcd3: LocalCluster) -> None:
    async def activate(alarm: int) -> None:
        async with client(etcd3) as c:
            req = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=0, alarm=alarm)  # type: ignore[arg-type]
            await c.call_any(lambda m, md, t: m.maintenance.Alarm(req, metadata=md, timeout=t))

    async def member_id(c: EtcdClient) -> int:
        return int((await c.status(c.endpoint(etcd3.endpoints[0]))).header.member_id)

    # an artificial NOSPACE (memberID 0 = this member): defrag goes ahead and clears it
    run(activate(pb.NOSPACE))
    r = cli("defrag", "--cluster", "--endpoints", etcd3.endpoints[0], "-w", "json", *FAST)
    assert r.code == 0, r.err
    data = report(r)
    assert [a["alarm"] for a in data["alarms"]["before"]] == ["NOSPACE"]
    assert [a["alarm"] for a in data["alarms"]["disarmed"]] == ["NOSPACE"]
    assert data["alarms"]["left"] == []

    run(activate(pb.CORRUPT))
    r = cli("defrag", "--cluster", "--endpoints", etcd3.endpoints[0], *FAST)
    assert r.code == 3
    assert "CORRUPT" in r.err and "--force" in r.err


def test_single_member_cluster_needs_force(etcd1: LocalCluster) -> None:
    fragment(etcd1, count=1000)
    r = cli("defrag", "--endpoints", etcd1.endpoints[0], *FAST)
    assert r.code == 3
    assert "single voting member" in r.err and "--force" in r.err
    r = cli("defrag", "--endpoints", etcd1.endpoints[0], "--force", "-w", "json", *FAST)
    assert r.code == 0, r.err
    assert [m["result"] for m in rows(report(r))] == ["defragmented"]


def test_learner_is_skipped(etcd3: LocalCluster) -> None:
    # a 4th member joins as a learner; --cluster leaves it out, --endpoints reports it as skipped
    learner = etcd3.new_member("m4")

    async def add() -> None:
        async with client(etcd3) as c:
            for _ in range(40):  # etcd refuses member add until the leader has seen every peer for 5s
                try:
                    await c.member_add([learner.peer_url], learner=True)
                    return
                except EtcdError as e:
                    assert "unhealthy cluster" in str(e)
                    await asyncio.sleep(0.25)
            raise AssertionError("member add kept failing")

    run(add())
    etcd3.start_member("m4", state="existing")
    etcd3.wait_healthy(members=[learner])
    fragment(etcd3, count=500)
    r = cli("defrag", "--endpoints", ",".join(etcd3.endpoints), "-w", "json", *FAST)
    assert r.code == 0, r.err
    by_ep = {m["endpoint"]: m for m in rows(report(r))}
    assert by_ep[learner.client_url]["result"] == "skipped"
    assert "learner" in by_ep[learner.client_url]["detail"]
    assert sum(m["result"] == "defragmented" for m in by_ep.values()) == 3
    r = cli("defrag", "--cluster", "--endpoints", etcd3.endpoints[0], "-w", "json", "--dry-run", *FAST)
    assert learner.client_url not in {m["endpoint"] for m in rows(report(r))}


@pytest.mark.unit
def test_bad_rule_is_a_usage_error_before_connecting() -> None:
    r = cli("defrag", "--rule", "dbsize > 1", "--endpoints", "127.0.0.1:1")
    assert r.code == 2
    assert "unknown variable 'dbsize'" in r.err and "did you mean 'dbSize'" in r.err
    r = cli("defrag", "--rule", "dbSize", "--endpoints", "127.0.0.1:1")
    assert r.code == 2 and "must be true or false" in r.err
    r = cli("defrag", "--rule", "dbSize > 1", "--auto", "--endpoints", "127.0.0.1:1")
    assert r.code == 2

"""``member list|add|remove|promote`` and ``alarm list|disarm`` against real etcd."""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.conftest import etcdctl


def test_member_list_matches_etcdctl(etcd3: LocalCluster) -> None:
    r = cli("member", "list", "-w", "json", "--endpoints", etcd3.endpoints[0])
    assert r.code == 0
    ours = {f"{m['ID']:x}": m["name"] for m in json.loads(r.out)["members"]}
    theirs = {}
    for line in etcdctl(etcd3, "member", "list").splitlines():
        parts = [p.strip() for p in line.split(",")]
        theirs[parts[0]] = parts[2]
    assert ours == theirs


def test_add_learner_start_promote_remove(etcd3: LocalCluster) -> None:
    ep = etcd3.endpoints[0]
    new = etcd3.new_member("m4")
    deadline = time.monotonic() + 20
    while True:  # etcd refuses reconfiguration until its peers have been connected for 5s
        r = cli("member", "add", "m4", "--peer-urls", new.peer_url, "--learner", "--endpoints", ep)
        if r.code == 0 or time.monotonic() > deadline:
            break
        assert "retry" in r.err, r.err
        time.sleep(0.5)
    assert r.code == 0, r.err
    assert "as a learner" in r.out
    initial = next(ln for ln in r.out.splitlines() if ln.startswith("ETCD_INITIAL_CLUSTER="))
    cluster_arg = initial.split("=", 1)[1].strip('"')
    assert f"m4={new.peer_url}" in cluster_arg
    etcd3.start_member("m4", state="existing", initial_cluster=cluster_arg)
    etcd3.wait_healthy(members=[new])
    listing = json.loads(cli("member", "list", "-w", "json", "--endpoints", ep).out)["members"]
    m4 = next(m for m in listing if m["name"] == "m4")
    assert m4["isLearner"] is True
    # promote once the learner has caught up (etcd refuses before that)
    deadline = time.monotonic() + 30
    while True:
        r = cli("member", "promote", f"{m4['ID']:x}", "--endpoints", ep)
        if r.code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.code == 0, r.err
    listing = json.loads(cli("member", "list", "-w", "json", "--endpoints", ep).out)["members"]
    assert not next(m for m in listing if m["name"] == "m4")["isLearner"]
    # remove it again
    r = cli("member", "remove", f"{m4['ID']:x}", "--endpoints", ep)
    assert r.code == 0, r.err
    etcd3.stop_member("m4")
    listing = json.loads(cli("member", "list", "-w", "json", "--endpoints", ep).out)["members"]
    assert len(listing) == 3


def test_remove_unknown_member(etcd1: LocalCluster) -> None:
    r = cli("member", "remove", "abc123", "--endpoints", etcd1.endpoints[0])
    assert r.code == 1
    assert "not in the cluster" in r.err
    r = cli("member", "remove", "zz", "--endpoints", etcd1.endpoints[0])
    assert r.code == 2


def _activate_nospace(endpoint: str) -> int:
    async def go() -> int:
        target = endpoint.split("://", 1)[1]
        async with grpc.aio.insecure_channel(target) as ch:
            m = rpc.MaintenanceStub(ch)
            st = await m.Status(pb.StatusRequest())
            await m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=st.header.member_id,
                                          alarm=pb.NOSPACE))
            return int(st.header.member_id)

    return asyncio.run(go())


def test_alarm_list_and_disarm(etcd1: LocalCluster) -> None:
    ep = etcd1.endpoints[0]
    assert cli("alarm", "list", "--endpoints", ep).out == ""
    mid = _activate_nospace(ep)
    r = cli("alarm", "list", "--endpoints", ep)
    assert r.out.strip() == f"memberID:{mid} alarm:NOSPACE"
    h = cli("endpoint", "health", "--endpoints", ep)
    assert h.code == 1 and "Active Alarm(s): NOSPACE" in h.out
    assert "quorum: yes (1 of 1" in h.out  # an alarm does not cost quorum
    r = cli("alarm", "disarm", "--endpoints", ep)
    assert r.code == 0 and "disarmed" in r.out
    assert json.loads(cli("alarm", "list", "-w", "json", "--endpoints", ep).out) == {"alarms": []}
    assert cli("endpoint", "health", "--endpoints", ep).code == 0

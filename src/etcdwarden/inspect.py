"""Cluster inspection: status and health of every member, quorum, and the situation the cluster is in.

All per-member calls run concurrently; a member that does not answer becomes a row with an error,
never an exception for the whole call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from etcdwarden.errors import EtcdError, PermissionDenied
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, member_endpoint
from etcdwarden.etcd.endpoints import Endpoint

ALARM_NAMES = {0: "NONE", 1: "NOSPACE", 2: "CORRUPT"}


@dataclass
class MemberStatus:
    endpoint: Endpoint
    status: pb.StatusResponse | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None

    @property
    def member_id(self) -> int:
        return int(self.status.header.member_id) if self.status else 0

    @property
    def is_leader(self) -> bool:
        return bool(self.status and self.status.leader and self.status.leader == self.status.header.member_id)

    @property
    def fragmentation(self) -> float:
        """Share of the database file that is free pages (0..1)."""
        if not self.status or self.status.dbSize <= 0:
            return 0.0
        return max(0.0, (self.status.dbSize - self.status.dbSizeInUse) / self.status.dbSize)

    def as_json(self) -> dict[str, object]:
        d: dict[str, object] = {"Endpoint": self.endpoint.raw}
        s = self.status
        if s is None:
            d["Error"] = self.error
            return d
        d["Status"] = {
            "header": {
                "cluster_id": int(s.header.cluster_id),
                "member_id": int(s.header.member_id),
                "revision": int(s.header.revision),
                "raft_term": int(s.header.raft_term),
            },
            "version": s.version,
            "dbSize": int(s.dbSize),
            "leader": int(s.leader),
            "raftIndex": int(s.raftIndex),
            "raftTerm": int(s.raftTerm),
            "raftAppliedIndex": int(s.raftAppliedIndex),
            "errors": list(s.errors),
            "dbSizeInUse": int(s.dbSizeInUse),
            "isLearner": bool(s.isLearner),
        }
        d["fragmentation"] = round(self.fragmentation, 4)
        return d


@dataclass
class Health:
    endpoint: Endpoint
    healthy: bool
    took: float
    error: str | None = None
    member_id: int = 0
    reachable: bool = False  # served a linearizable read (alarms aside): counts toward quorum


@dataclass
class Quorum:
    voters: int
    healthy_voters: int
    known: bool = True
    unhealthy_names: list[str] = field(default_factory=list)

    @property
    def needed(self) -> int:
        return self.voters // 2 + 1

    @property
    def has_quorum(self) -> bool:
        return self.known and self.voters > 0 and self.healthy_voters >= self.needed


async def cluster_endpoints(client: EtcdClient) -> list[Endpoint]:
    """Every started member's first client URL, from MemberList (etcdctl's ``--cluster``)."""
    members = await client.member_list()
    eps: list[Endpoint] = []
    seen: set[str] = set()
    for m in members:
        for url in m.clientURLs:
            ep = client.endpoint(url)
            if ep.target not in seen:
                seen.add(ep.target)
                eps.append(ep)
    return eps


async def target_endpoints(client: EtcdClient, cluster: bool) -> list[Endpoint]:
    return await cluster_endpoints(client) if cluster else list(client.config.endpoints)


async def member_status(client: EtcdClient, ep: Endpoint) -> MemberStatus:
    try:
        return MemberStatus(ep, await client.status(ep))
    except EtcdError as e:
        return MemberStatus(ep, None, e.detail)


async def status_all(client: EtcdClient, eps: list[Endpoint]) -> list[MemberStatus]:
    return list(await asyncio.gather(*(member_status(client, ep) for ep in eps)))


async def member_health(client: EtcdClient, ep: Endpoint) -> Health:
    """etcdctl's health check: a linearizable read of key ``health`` on that member, then alarms."""
    start = time.monotonic()
    member_id = 0
    try:
        resp = await client.range_on(ep, pb.RangeRequest(key=b"health"))
        member_id = int(resp.header.member_id)
    except PermissionDenied:
        pass  # the read was served: the member is answering through raft
    except EtcdError as e:
        return Health(ep, False, time.monotonic() - start, e.detail)
    took = time.monotonic() - start
    try:
        alarms = await client.alarms()
    except PermissionDenied:
        alarms = []  # this user may not list alarms; the read above proved the member healthy
    except EtcdError as e:
        return Health(ep, False, took, f"alarm list failed: {e.detail}", member_id, reachable=True)
    if alarms:
        names = ", ".join(sorted({ALARM_NAMES.get(int(a.alarm), str(a.alarm)) for a in alarms}))
        return Health(ep, False, took, f"Active Alarm(s): {names}", member_id, reachable=True)
    return Health(ep, True, took, None, member_id, reachable=True)


async def health_all(client: EtcdClient, eps: list[Endpoint]) -> list[Health]:
    return list(await asyncio.gather(*(member_health(client, ep) for ep in eps)))


async def quorum(client: EtcdClient, health: list[Health]) -> Quorum:
    """How many voting members are healthy, from MemberList (serializable, works without quorum)."""
    try:
        members = await client.member_list(linearizable=False)
    except EtcdError:
        return Quorum(voters=0, healthy_voters=0, known=False)
    voters = [m for m in members if not m.isLearner]
    checked = {h.endpoint.target for h in health}
    extra = [ep for m in voters if (ep := member_endpoint(m)) is not None and ep.target not in checked]
    health = health + await health_all(client, extra)
    healthy_urls = {h.endpoint.target for h in health if h.reachable}
    healthy = 0
    unhealthy: list[str] = []
    for m in voters:
        ep = member_endpoint(m)
        if ep is not None and ep.target in healthy_urls:
            healthy += 1
        else:
            unhealthy.append(m.name or f"{m.ID:x}")
    return Quorum(voters=len(voters), healthy_voters=healthy, unhealthy_names=unhealthy)

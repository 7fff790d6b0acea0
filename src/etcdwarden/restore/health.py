"""After a restore: wait for a leader and every member healthy, then prove they hold the backup's data.

Verification: every member's HashKV at the backup's revision is the same, the revision is the backup's
(plus the bump), and the live key count at that revision equals the snapshot's.

After ``--bump-revision N --mark-compacted`` (or when the backup's newest revisions were deletions its
compaction removed) the expected revision is also the compaction revision, and etcd's HashKV refuses any
revision <= the compaction revision (ErrCompacted; a range at it still works): HashKV is then taken at each
member's current revision, and compared once every member is at the same one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import EtcdError, EtcdwardenError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.endpoints import Endpoint
from etcdwarden.inspect import member_health


async def wait_healthy(client: EtcdClient, endpoints: list[Endpoint], timeout: float = 120.0) -> int:
    """Wait until every endpoint has a leader and passes etcdctl's health check; the leader's ID."""
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while True:
        problems = []
        leaders: set[int] = set()
        for ep in endpoints:
            try:
                st = await client.status(ep, timeout=2.0)
            except EtcdError as e:
                problems.append(f"{ep.raw}: {e.detail}")
                continue
            if not st.leader:
                problems.append(f"{ep.raw}: no leader")
                continue
            leaders.add(int(st.leader))
            h = await member_health(client, ep)
            if not h.healthy:
                problems.append(f"{ep.raw}: {h.error}")
        if not problems and len(leaders) == 1:
            return leaders.pop()
        if len(leaders) > 1:
            problems.append(f"members disagree on the leader: {sorted(f'{x:x}' for x in leaders)}")
        if time.monotonic() > deadline:
            raise EtcdwardenError(f"the cluster is not healthy after {timeout:.0f}s: " + "; ".join(problems))
        await asyncio.sleep(0.5)


@dataclass
class MemberCheck:
    endpoint: str
    member_id: int
    revision: int
    hash: int
    keys: int
    cluster_id: int
    hash_revision: int = 0  # the revision the hash covers (0: not recorded)

    def as_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "member_id": f"{self.member_id:x}", "revision": self.revision,
                "hash": self.hash, "hash_revision": self.hash_revision, "keys": self.keys}


@dataclass
class ClusterCheck:
    members: list[MemberCheck]
    expected_revision: int
    expected_keys: int | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "expected_revision": self.expected_revision, "expected_keys": self.expected_keys,
                "members": [m.as_json() for m in self.members], "problems": self.problems, "notes": self.notes}


async def check_member(client: EtcdClient, ep: Endpoint, revision: int, hash_current: bool = False) -> MemberCheck:
    """Status, HashKV (at ``revision``, or at the current one) and the key count at ``revision`` of one member."""
    st = await client.status(ep)
    hk = await client.hashkv(ep, 0 if hash_current else revision)
    r = await client.range_on(ep, pb.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True,
                                                  serializable=True, revision=revision))
    hashed_at = int(hk.header.revision) if hash_current else revision
    return MemberCheck(ep.raw, int(st.header.member_id), int(st.header.revision), int(hk.hash), int(r.count),
                       int(st.header.cluster_id), hashed_at)


async def verify_cluster(client: EtcdClient, endpoints: list[Endpoint], expected_revision: int,
                         expected_keys: int | None, compacted_at_expected: bool = False,
                         settle: float = 10.0) -> ClusterCheck:
    """``compacted_at_expected``: ``expected_revision`` is the compaction revision (HashKV refuses it)."""
    deadline = time.monotonic() + settle
    while True:
        members = list(await asyncio.gather(*(check_member(client, ep, expected_revision, compacted_at_expected)
                                              for ep in endpoints)))
        if len({m.hash_revision for m in members}) == 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)  # written to between the calls: hash them again
    check = ClusterCheck(members, expected_revision, expected_keys)
    if len({m.hash_revision for m in members}) > 1:
        check.problems.append(f"HashKV could not be compared: the members kept being written to for {settle:.0f}s "
                              "(revisions " + ", ".join(f"{m.endpoint}={m.hash_revision}" for m in members)
                              + "); stop the writers and rerun to verify again")
    elif len({m.hash for m in members}) > 1:
        check.problems.append("HashKV differs between members at revision "
                              f"{members[0].hash_revision}: " + ", ".join(f"{m.endpoint}={m.hash}" for m in members))
    for m in members:
        if m.revision < expected_revision:
            check.problems.append(f"{m.endpoint}: revision {m.revision}, the backup's is {expected_revision}")
        elif m.revision > expected_revision:
            check.notes.append(f"{m.endpoint}: revision {m.revision} (written to since the restore; compared at "
                               f"{expected_revision})")
        if expected_keys is not None and m.keys != expected_keys:
            check.problems.append(f"{m.endpoint}: {m.keys} keys at revision {expected_revision}, the backup "
                                  f"holds {expected_keys}")
    if len({m.cluster_id for m in members}) > 1:
        check.problems.append("members report different cluster IDs")
    return check

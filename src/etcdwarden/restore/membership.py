"""Joining a member to a running cluster: add as a learner, start it, wait until caught up, promote.

Shared by ``restore cluster --mode single-then-join`` and ``member replace``. etcd refuses to promote
a learner that is not yet in sync with the leader (raft Match < 90% of the leader's) and refuses a
member add while the leader is not connected to every voter: both are retried with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from etcdwarden.errors import EtcdError, EtcdwardenError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.endpoints import Endpoint

T = TypeVar("T")
_RETRY_TEXT = ("in sync", "not ready", "unhealthy cluster", "not enough started members", "no leader",
               "leader changed", "timed out", "too many learner")


async def retry(what: str, fn: Callable[[], Awaitable[T]], timeout: float, first: float = 0.2,
                most: float = 2.0) -> T:
    """Call ``fn`` until it succeeds; retry with exponential backoff on transient etcd refusals."""
    deadline = time.monotonic() + timeout
    delay = first
    while True:
        try:
            return await fn()
        except EtcdError as e:
            text = str(e).lower()
            if not any(t in text for t in _RETRY_TEXT) and "unreachable" not in type(e).__name__.lower():
                raise
            if time.monotonic() + delay > deadline:
                raise EtcdwardenError(f"{what}: still failing after {timeout:.0f}s: {e}") from None
            await asyncio.sleep(delay)
            delay = min(most, delay * 2)


def find_by_peer_urls(members: list[pb.Member], peer_urls: list[str]) -> pb.Member | None:
    want = set(peer_urls)
    for m in members:
        if want & set(m.peerURLs):
            return m
    return None


async def add_learner(client: EtcdClient, peer_urls: list[str], timeout: float = 60.0) -> int:
    """Add a learner with ``peer_urls`` (or find the one a crashed run already added); its member ID."""
    existing = find_by_peer_urls(await client.member_list(), peer_urls)
    if existing is not None:
        if existing.name and not existing.isLearner:
            raise EtcdwardenError(f"a started voting member {existing.name} ({existing.ID:x}) already has the peer "
                                  f"URLs {','.join(peer_urls)}")
        return int(existing.ID)

    async def add() -> int:
        return int((await client.member_add(peer_urls, learner=True)).member.ID)

    return await retry("member add --learner", add, timeout)


def initial_cluster(members: list[pb.Member], new_id: int, new_name: str) -> str:
    """``--initial-cluster`` for a member joining ``members`` (the unstarted new one under ``new_name``)."""
    parts = []
    for m in members:
        name = new_name if int(m.ID) == new_id else m.name
        if not name:
            continue  # another unstarted member: it cannot be named yet
        parts += [f"{name}={u}" for u in m.peerURLs]
    return ",".join(parts)


async def wait_caught_up(client: EtcdClient, ep: Endpoint, timeout: float = 120.0) -> int:
    """Wait until the member at ``ep`` answers and has applied the leader's raft index; its applied index."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            mine = await client.status(ep, timeout=2.0)
            if mine.leader:
                leader = await client.call_any(lambda m, md, t: m.maintenance.Status(pb.StatusRequest(), metadata=md,
                                                                                     timeout=t))
                if mine.raftAppliedIndex >= leader.raftIndex:
                    return int(mine.raftAppliedIndex)
                last = f"applied {mine.raftAppliedIndex} of {leader.raftIndex}"
        except EtcdError as e:
            last = str(e)
        await asyncio.sleep(0.3)
    raise EtcdwardenError(f"{ep.raw} did not catch up with the leader within {timeout:.0f}s ({last})")


async def promote(client: EtcdClient, member_id: int, timeout: float = 120.0) -> None:
    """Promote the learner; retried with backoff while etcd says it is not in sync yet."""
    members = await client.member_list()
    me = next((m for m in members if int(m.ID) == member_id), None)
    if me is None:
        raise EtcdwardenError(f"member {member_id:x} is not in the cluster")
    if not me.isLearner:
        return

    async def go() -> None:
        await client.member_promote(member_id)

    await retry(f"member promote {member_id:x}", go, timeout)

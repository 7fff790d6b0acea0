"""Helpers for the defrag tests: fragment a real cluster, read member status, run coroutines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

from etcdwarden.errors import NoSpace
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, prefix_end
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.sample import fill
from tests.cli_helpers import Result

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def client(cluster: LocalCluster) -> EtcdClient:
    return EtcdClient(ClientConfig.from_strings(cluster.endpoints, dial_timeout=1.0))


async def _fragment(cluster: LocalCluster, count: int, value_size: int) -> int:
    async with client(cluster) as c:
        await fill(c, count, value_size, prefix="/frag")
        resp = await c.delete(b"/frag", prefix_end(b"/frag"))
        rev = int(resp.header.revision)
        await c.compact(rev, physical=True)
        return rev


def fragment(cluster: LocalCluster, count: int = 5000, value_size: int = 1024) -> int:
    """Write ``count`` keys, delete them and compact: every member's file keeps its size, mostly free."""
    return run(_fragment(cluster, count, value_size))


async def _statuses(cluster: LocalCluster) -> dict[str, pb.StatusResponse]:
    async with client(cluster) as c:
        return {ep: await c.status(c.endpoint(ep)) for ep in cluster.endpoints}


def statuses(cluster: LocalCluster) -> dict[str, pb.StatusResponse]:
    """Status of every member, by client URL."""
    return run(_statuses(cluster))


def leader_url(cluster: LocalCluster) -> str:
    for ep, st in statuses(cluster).items():
        if st.leader == st.header.member_id:
            return ep
    raise AssertionError("no leader")


async def _fill_to_nospace(cluster: LocalCluster) -> int:
    written = 0
    async with client(cluster) as c:
        for i in range(10_000):
            try:
                await fill(c, 128, 4096, prefix=f"/big/{i:05d}", seed=i)
            except NoSpace:
                return written
            written += 128
    raise AssertionError("the NOSPACE alarm never fired")


def fill_to_nospace(cluster: LocalCluster) -> int:
    """Write 4 KiB values until etcd answers 'database space exceeded'; returns keys written."""
    return run(_fill_to_nospace(cluster))


def report(r: Result) -> dict[str, Any]:
    data = json.loads(r.out)
    assert isinstance(data, dict)
    return data


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    members = data["members"]
    assert isinstance(members, list)
    return members

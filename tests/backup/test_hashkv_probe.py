"""HashKV is asked as soon as the stream ended, at the revision the snapshot's rightmost key says; the walk's
revision decides: a probe started at another revision is asked again at the right one."""

from __future__ import annotations

import asyncio

from etcdwarden.backup.hashkv import HashKVProbe, measure
from etcdwarden.backup.preflight import preflight
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.snapshot.status import SnapshotStatus
from tests.backup.conftest import load


def test_probe_started_at_another_revision_is_asked_again(etcd1: LocalCluster) -> None:
    load(etcd1, 20)
    load(etcd1, 20)

    async def go() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            pre = await preflight(c)
            chosen = pre.candidates[0]
            st = chosen.status.status
            assert st is not None
            rev = int(st.header.revision)
            loop = asyncio.get_running_loop()
            right = (await measure(c, chosen.endpoint, rev)).as_hash_kv()
            older = await measure(c, chosen.endpoint, rev - 1)
            assert right.hash != older.hash
            status = SnapshotStatus(hash=0, revision=rev, total_key=0, total_size=0)
            warnings: list[str] = []
            # started at the wrong revision: the result is the one at the walk's revision
            probe = HashKVProbe(loop, c, chosen, rev - 1)
            got = await asyncio.to_thread(probe.result, status, warnings)
            assert got == right and probe.revision == rev
            # started at the right one: that answer is used as it is
            probe = HashKVProbe(loop, c, chosen, rev)
            first = probe.future
            assert await asyncio.to_thread(probe.result, status, warnings) == right and probe.future is first
            # no hint (a file that did not tell): asked at the walk's revision; --verify hash: the member's
            assert await asyncio.to_thread(HashKVProbe(loop, c, chosen, None).result, status, warnings) == right
            assert await asyncio.to_thread(HashKVProbe(loop, c, chosen, None).result, None, warnings) == right
            assert warnings == []

    asyncio.run(go())

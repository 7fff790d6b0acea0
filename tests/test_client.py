"""The async client against real etcd: KV, failover, TLS, auth and typed errors."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from etcdwarden.errors import (
    AuthenticationFailed,
    NotFound,
    PermissionDenied,
    Timeout,
    TLSError,
    Unreachable,
)
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, prefix_end
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.ports import free_port
from etcdwarden.local.sample import fill
from tests.certs import make_ca
from tests.conftest import ALICE_PASSWORD, ROOT_PASSWORD

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def tls_config(c: LocalCluster, **kw: object) -> ClientConfig:
    assert c.tls
    base: dict[str, object] = {"cacert": c.tls.ca, "cert": c.tls.client_cert, "key": c.tls.client_key}
    base.update(kw)
    return ClientConfig.from_strings(c.endpoints, **base)


@pytest.mark.unit
def test_prefix_end() -> None:
    assert prefix_end(b"/a") == b"/b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


def test_kv_and_fill(etcd1: LocalCluster) -> None:
    async def go() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            await c.put(b"/k", b"v1")
            r = await c.get(b"/k")
            assert r.kvs[0].value == b"v1"
            rev = await fill(c, 300, value_size=256)
            r = await c.range(pb.RangeRequest(key=b"/registry/", range_end=prefix_end(b"/registry/"),
                                              count_only=True))
            assert r.count == 300
            assert rev == r.header.revision
            lease = await c.lease_grant(60)
            await c.put(b"/leased", b"x", lease=lease)
            ttl = await c.lease_ttl(lease)
            assert 0 < ttl.TTL <= 60
            d = await c.delete(b"/k")
            assert d.deleted == 1

    _run(go())


def test_failover_skips_dead_endpoint(etcd3: LocalCluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    cfg = ClientConfig.from_strings([dead, *etcd3.endpoints], dial_timeout=1.0)

    async def go() -> None:
        async with EtcdClient(cfg) as c:
            await c.put(b"/f", b"1")
            members = await c.member_list()
            assert len(members) == 3

    _run(go())


@pytest.mark.unit
def test_unreachable_within_dial_timeout() -> None:
    import time

    cfg = ClientConfig.from_strings(f"127.0.0.1:{free_port()}", dial_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(Unreachable) as e:
        _run(EtcdClient(cfg).member_list())
    assert time.monotonic() - start < 5
    assert "connection refused" in str(e.value)


def test_command_timeout(etcd1: LocalCluster) -> None:
    cfg = ClientConfig.from_strings(etcd1.endpoints, command_timeout=0.5)
    pid = etcd1.members[0].pid
    assert pid

    async def go() -> None:
        async with EtcdClient(cfg) as c:
            await c.get(b"/x")  # connected
            os.kill(pid, signal.SIGSTOP)  # the member stops answering
            try:
                await c.get(b"/x")
            finally:
                os.kill(pid, signal.SIGCONT)

    with pytest.raises(Timeout) as e:
        _run(go())
    assert "--command-timeout" in str(e.value)
    assert "0.5s" in str(e.value)


def test_tls_ok(etcd_tls: LocalCluster) -> None:
    async def go() -> str:
        async with EtcdClient(tls_config(etcd_tls)) as c:
            await c.put(b"/t", b"tls")
            st = await c.status(c.config.endpoints[0])
            return st.version

    assert _run(go()).startswith("3.5")


def test_tls_wrong_ca_names_the_file(etcd_tls: LocalCluster, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "other", name="other-ca")
    with pytest.raises(TLSError) as e:
        _run(EtcdClient(tls_config(etcd_tls, cacert=other_ca)).member_list())
    assert str(other_ca) in str(e.value)
    assert "not trusted" in str(e.value)


def test_tls_missing_client_cert(etcd_tls: LocalCluster) -> None:
    with pytest.raises(Unreachable) as e:
        _run(EtcdClient(tls_config(etcd_tls, cert=None, key=None)).member_list())
    assert "client certificate" in str(e.value) or "--cert" in str(e.value)


def test_auth_ok_and_reauth_after_restart(etcd_auth: LocalCluster) -> None:
    cfg = ClientConfig.from_strings(etcd_auth.endpoints, user="root", password=ROOT_PASSWORD)

    async def go() -> None:
        async with EtcdClient(cfg) as c:
            await c.put(b"/a", b"1")
            token = c._token
            assert token
            # simple tokens live in memory only: a restart invalidates them
            etcd_auth.stop_member("m1")
            etcd_auth.start_member("m1")
            await asyncio.to_thread(etcd_auth.wait_healthy)
            for _ in range(50):
                try:
                    await c.put(b"/a", b"2")
                    break
                except Unreachable:
                    await asyncio.sleep(0.2)
            assert c._token and c._token != token
            assert (await c.get(b"/a")).kvs[0].value == b"2"

    _run(go())


def test_auth_wrong_password(etcd_auth: LocalCluster) -> None:
    cfg = ClientConfig.from_strings(etcd_auth.endpoints, user="root", password="wrong")
    with pytest.raises(AuthenticationFailed) as e:
        _run(EtcdClient(cfg).member_list())
    assert "invalid user name or password" in str(e.value)
    assert "wrong" not in str(e.value)


def test_permission_denied_for_non_root(etcd_auth: LocalCluster) -> None:
    cfg = ClientConfig.from_strings(etcd_auth.endpoints, user="alice", password=ALICE_PASSWORD)

    async def go() -> None:
        async with EtcdClient(cfg) as c:
            await c.hashkv(c.config.endpoints[0])

    with pytest.raises(PermissionDenied) as e:
        _run(go())
    assert "root role" in str(e.value)


def test_no_credentials_on_auth_cluster(etcd_auth: LocalCluster) -> None:
    async def go() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd_auth.endpoints)) as c:
            await c.hashkv(c.config.endpoints[0])

    with pytest.raises(PermissionDenied) as e:
        _run(go())
    assert "--user" in str(e.value)


def test_member_remove_unknown_is_not_found(etcd1: LocalCluster) -> None:
    with pytest.raises(NotFound):
        _run(EtcdClient(ClientConfig.from_strings(etcd1.endpoints)).member_remove(0x1234))


def test_alarm_activate_list_disarm(etcd1: LocalCluster) -> None:
    async def go() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            st = await c.status(c.config.endpoints[0])
            mid = st.header.member_id
            ch = grpc.aio.insecure_channel(c.config.endpoints[0].target)
            from etcdwarden.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc

            await rpc.MaintenanceStub(ch).Alarm(
                pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=mid, alarm=pb.NOSPACE))
            await ch.close()
            alarms = await c.alarms()
            assert [(a.memberID, a.alarm) for a in alarms] == [(mid, pb.NOSPACE)]
            await c.alarm_disarm(mid, pb.NOSPACE)
            assert await c.alarms() == []

    _run(go())


def test_insecure_skip_tls_verify(etcd_tls: LocalCluster, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "other", name="other-ca")
    # a CA that did not sign the server certificate: verification would fail...
    with pytest.raises(TLSError):
        _run(EtcdClient(tls_config(etcd_tls, cacert=other_ca)).member_list())
    # ...and skipping it works (the client certificate is still presented)

    async def go() -> int:
        async with EtcdClient(tls_config(etcd_tls, cacert=None, insecure_skip_tls_verify=True)) as c:
            return len(await c.member_list())

    assert _run(go()) == 1

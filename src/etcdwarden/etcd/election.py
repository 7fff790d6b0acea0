"""Leader election through etcd's own Election API (``v3electionpb``), on a lease kept alive here.

One :class:`Election` per agent. :meth:`Election.campaign` grants a lease, starts keeping it alive
(the ``LeaseKeepAlive`` stream, failing over across endpoints) and blocks in ``Election.Campaign``
until this agent holds the election key: the key under ``name/`` with the lowest create revision.
The returned :class:`Leadership` carries that key and its create revision; writes that only the
leader may make compare the key's create revision in a Txn (see :meth:`Leadership.guard`), so a
deposed leader whose lease has expired can never write.

When the lease cannot be renewed before it expires, :attr:`Election.lost` is set; the etcd server
deletes the key at expiry and the next candidate's ``Campaign`` returns, so a leader that dies is
replaced within the lease TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from etcdwarden.errors import EtcdError, NoLeader, Timeout, Unreachable
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.v3electionpb import v3election_pb2 as epb
from etcdwarden.etcd.api.v3electionpb import v3election_pb2_grpc as erpc
from etcdwarden.etcd.client import EtcdClient

log = logging.getLogger(__name__)
T = TypeVar("T")

_FAILOVER = (Unreachable, NoLeader)


class LeadershipLost(EtcdError):
    """This agent is no longer the leader (lease expired or revoked, or the key is gone)."""


@dataclass(frozen=True)
class Leadership:
    """The election key this agent holds."""

    name: bytes
    key: bytes
    rev: int  # create revision of the key: what guarded writes compare
    lease: int

    def guard(self) -> pb.Compare:
        """A Txn compare that holds only while this leadership holds."""
        return pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.CREATE, key=self.key, create_revision=self.rev)

    def as_proto(self) -> epb.LeaderKey:
        return epb.LeaderKey(name=self.name, key=self.key, rev=self.rev, lease=self.lease)


@dataclass(frozen=True)
class LeaderInfo:
    key: bytes
    value: bytes
    create_revision: int
    lease: int


class Election:
    """Campaign for ``name`` with ``value`` (who we are) on a lease of ``ttl`` seconds."""

    def __init__(self, client: EtcdClient, name: bytes, value: bytes, ttl: int) -> None:
        self.client = client
        self.name = name
        self.value = value
        self.ttl = max(2, int(ttl))
        self.lost = asyncio.Event()
        self.leadership: Leadership | None = None
        self._lease = 0
        self._granted_ttl = self.ttl
        self._keepalive: asyncio.Task[None] | None = None
        self._stubs: dict[str, Any] = {}

    # -- plumbing ----------------------------------------------------------------------------
    def _stub(self, m: Any) -> Any:
        stub = self._stubs.get(m.ep.target)
        if stub is None:
            stub = erpc.ElectionStub(m.channel)
            self._stubs[m.ep.target] = stub
        return stub

    async def _any(self, fn: Callable[[Any, list[tuple[str, str]] | None, float], Awaitable[T]],
                   timeout: float | None) -> T:
        """Try each endpoint in turn on connection failures; deadlines are the caller's."""
        last: EtcdError | None = None
        for ep in self.client.config.endpoints:
            try:
                return await self.client.call(ep, fn, timeout)
            except _FAILOVER as e:
                last = e
        assert last is not None
        raise last

    # -- lease -------------------------------------------------------------------------------
    @property
    def lease(self) -> int:
        return self._lease

    async def _ensure_lease(self) -> int:
        if self._lease and not self.lost.is_set():
            return self._lease
        self.lost = asyncio.Event()
        resp = await self.client.call_any(
            lambda m, md, t: m.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=self.ttl), metadata=md, timeout=t))
        self._lease = int(resp.ID)
        self._granted_ttl = max(1, int(resp.TTL))
        self._keepalive = asyncio.create_task(self._keep_alive(self._lease), name="etcdwarden-lease-keepalive")
        log.info("lease %x granted (ttl %ss)", self._lease, self._granted_ttl)
        return self._lease

    async def _keep_alive(self, lease: int) -> None:
        """Renew every ttl/3 over a LeaseKeepAlive stream; fail over; set ``lost`` at expiry."""
        expires = time.monotonic() + self._granted_ttl
        interval = max(0.5, self._granted_ttl / 3)
        eps = list(self.client.config.endpoints)
        i = 0
        while not self.lost.is_set():
            ep = eps[i % len(eps)]
            try:
                stream = await self.client.call(
                    ep, lambda m, md, t: _open_stream(m, md), timeout=max(0.5, expires - time.monotonic()))
                try:
                    while True:
                        budget = expires - time.monotonic()
                        if budget <= 0:
                            break
                        await asyncio.wait_for(stream.write(pb.LeaseKeepAliveRequest(ID=lease)), budget)
                        resp = await asyncio.wait_for(stream.read(), max(0.1, expires - time.monotonic()))
                        if resp is grpc.aio.EOF:  # the member closed the stream: try the next one
                            raise Unreachable("keep-alive stream closed", ep.raw)
                        if int(resp.TTL) <= 0:
                            log.warning("lease %x expired or was revoked", lease)
                            self._set_lost()
                            return
                        expires = time.monotonic() + int(resp.TTL)
                        await asyncio.sleep(interval)
                finally:
                    stream.cancel()
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
                log.warning("lease keep-alive via %s failed: %s", ep.raw, e)
                i += 1
                await asyncio.sleep(min(0.5, max(0.0, expires - time.monotonic())))
            if time.monotonic() >= expires:
                log.warning("lease %x could not be renewed before it expired", lease)
                self._set_lost()
                return

    def _set_lost(self) -> None:
        self.leadership = None
        self._lease = 0
        self.lost.set()

    # -- election ----------------------------------------------------------------------------
    async def campaign(self, timeout: float | None = None) -> Leadership:
        """Block until this agent leads (or ``timeout`` passes: :class:`~etcdwarden.errors.Timeout`)."""
        lease = await self._ensure_lease()
        req = epb.CampaignRequest(name=self.name, lease=lease, value=self.value)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            campaign = asyncio.ensure_future(self._campaign_rpc(req, remaining))
            lost = asyncio.ensure_future(self.lost.wait())
            done, _ = await asyncio.wait({campaign, lost}, return_when=asyncio.FIRST_COMPLETED)
            if campaign not in done:
                campaign.cancel()
                with contextlib.suppress(asyncio.CancelledError, EtcdError):
                    await campaign
                lease = await self._ensure_lease()  # lost while waiting: a new lease, campaign again
                req = epb.CampaignRequest(name=self.name, lease=lease, value=self.value)
                continue
            lost.cancel()
            try:
                resp = campaign.result()
            except Timeout:
                raise Timeout(f"not elected within {timeout:g}s (another agent leads)") from None
            lk = resp.leader
            self.leadership = Leadership(name=bytes(lk.name), key=bytes(lk.key), rev=int(lk.rev),
                                         lease=int(lk.lease))
            log.info("elected leader (key %s, revision %d)", self.leadership.key.decode(errors="replace"),
                     self.leadership.rev)
            return self.leadership

    async def _campaign_rpc(self, req: epb.CampaignRequest, timeout: float | None) -> epb.CampaignResponse:
        async def fn(m: Any, md: list[tuple[str, str]] | None, _t: float) -> epb.CampaignResponse:
            resp: epb.CampaignResponse = await self._stub(m).Campaign(req, metadata=md, timeout=timeout)
            return resp

        return await self._any(fn, timeout)

    async def proclaim(self, value: bytes) -> None:
        ld = self.leadership
        if ld is None:
            raise LeadershipLost("not the leader")
        req = epb.ProclaimRequest(leader=ld.as_proto(), value=value)
        await self._any(lambda m, md, t: self._stub(m).Proclaim(req, metadata=md, timeout=t), None)
        self.value = value

    async def leader(self) -> LeaderInfo | None:
        """Who leads now (None when nobody does)."""
        req = epb.LeaderRequest(name=self.name)

        async def fn(m: Any, md: list[tuple[str, str]] | None, t: float) -> epb.LeaderResponse | None:
            try:
                resp: epb.LeaderResponse = await self._stub(m).Leader(req, metadata=md, timeout=t)
                return resp
            except grpc.aio.AioRpcError as e:
                if "election: no leader" in (e.details() or ""):
                    return None
                raise

        resp = await self._any(fn, None)
        if resp is None or not resp.HasField("kv"):
            return None
        kv = resp.kv
        return LeaderInfo(key=bytes(kv.key), value=bytes(kv.value), create_revision=int(kv.create_revision),
                          lease=int(kv.lease))

    async def is_leader(self) -> bool:
        """Ask etcd whether our key is still the leader key (a read, not a guess)."""
        ld = self.leadership
        if ld is None or self.lost.is_set():
            return False
        info = await self.leader()
        return info is not None and info.key == ld.key and info.create_revision == ld.rev

    async def resign(self) -> None:
        ld = self.leadership
        self.leadership = None
        if ld is None:
            return
        req = epb.ResignRequest(leader=ld.as_proto())
        with contextlib.suppress(EtcdError):
            await self._any(lambda m, md, t: self._stub(m).Resign(req, metadata=md, timeout=t), None)
        log.info("resigned leadership")

    async def close(self) -> None:
        """Resign, stop the keep-alive and revoke the lease (others take over at once)."""
        await self.resign()
        await self._stop_keepalive()
        lease, self._lease = self._lease, 0
        if lease:
            with contextlib.suppress(EtcdError):
                await self.client.lease_revoke(lease)
        self.lost.set()

    async def abandon(self) -> None:
        """Stop renewing without resigning or revoking: what a crash looks like to the others."""
        await self._stop_keepalive()
        self._set_lost()

    async def _stop_keepalive(self) -> None:
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _open_stream(m: Any, md: list[tuple[str, str]] | None) -> Any:
    stream = m.lease.LeaseKeepAlive(metadata=md)
    return stream

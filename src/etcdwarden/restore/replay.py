"""Replay captured revisions into a scratch member, exactly: the engine of a point-in-time restore.

A :class:`Replayer` talks to one etcd started by :class:`~etcdwarden.restore.scratch_member.ScratchMember`
on a copy restored from the chain's full backup. For every source revision it sends **one Txn holding all of
that revision's operations** (puts with their lease, deletes) and checks that etcd answered with the very
same revision: the member's revision counter, each key's create/mod revision and version then come out as
in the source, because they only depend on the state before the revision and the operations of it.

Leases: a grant record is replayed as ``LeaseGrant`` with the source's ID and TTL (a put attached to a lease
no grant record named is given the TTL the pre-scan found for it, else :data:`FALLBACK_TTL` and a warning);
every lease of the member is kept alive while the replay runs, so none expires early and deletes keys on
its own (that would shift every later revision; the revision check would stop the replay). A revocation
deletes the lease's keys in the source as one revision of delete events, replayed like any other; the
lease itself is revoked once no key is attached to it any more (a revoke then changes no revision), so a
lease whose keys are still there at the target point stays.

Synchronous gRPC on purpose: one request in flight keeps the source order (etcd orders concurrent
requests as it receives them, not as they were sent) and the plain stub costs less per call than the
asyncio client, which matters at thousands of revisions a second.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc
from etcdwarden.format.segment import LeaseRecord, Record, RevisionRecord
from etcdwarden.restore.scratch_tls import ScratchTLS

log = logging.getLogger(__name__)

FALLBACK_TTL = 3600  # a lease used by a put but never seen granted: kept an hour after the restore
MAX_MESSAGE = 256 << 20
KEEPALIVE_TICK = 0.25
CALL_TIMEOUT = 60.0

#: flags for the scratch member a replay runs on (besides ScratchMember's own): no fsync (a throwaway copy),
#: room for any source revision (a lease revoke or a DeleteRange can delete thousands of keys in one revision),
#: a raft snapshot every 10,000 entries (etcd keeps the entries since the last one in memory)
REPLAY_ETCD_ARGS = ("--unsafe-no-fsync", "--max-txn-ops", "1000000", "--max-request-bytes", str(MAX_MESSAGE // 2),
                    "--quota-backend-bytes", str(8 << 30), "--snapshot-count", "10000")


class ReplayError(EtcdwardenError):
    """The replay could not reproduce a revision exactly; the message names the revision and what differed."""


@dataclass
class ReplayStats:
    revisions: int = 0
    events: int = 0
    lease_grants: int = 0
    lease_revokes: int = 0
    last_revision: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.revisions / self.seconds if self.seconds > 0 else 0.0


class _KeepAlive:
    """Keep every lease of the member alive: one LeaseKeepAlive stream, each lease refreshed every TTL/4."""

    def __init__(self, stub: rpc.LeaseStub) -> None:
        self._stub = stub
        self._due: dict[int, tuple[float, float]] = {}  # lease -> (next refresh, interval)
        self._lock = threading.Lock()
        self._requests: queue.Queue[pb.LeaseKeepAliveRequest | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream: grpc.RpcContext | None = None
        self.error: BaseException | None = None

    def add(self, lease_id: int, ttl: int) -> None:
        interval = max(0.2, min(ttl / 4.0, 30.0))
        with self._lock:
            self._due[lease_id] = (0.0, interval)

    def discard(self, lease_id: int) -> None:
        with self._lock:
            self._due.pop(lease_id, None)

    def _gen(self) -> Iterator[pb.LeaseKeepAliveRequest]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def _schedule(self) -> None:
        while not self._stop.wait(KEEPALIVE_TICK / 2):
            now = time.monotonic()
            with self._lock:
                due = [(lid, iv) for lid, (at, iv) in self._due.items() if at <= now]
                for lid, iv in due:
                    self._due[lid] = (now + iv, iv)
            for lid, _ in due:
                self._requests.put(pb.LeaseKeepAliveRequest(ID=lid))

    def _drain(self, responses: Iterator[pb.LeaseKeepAliveResponse]) -> None:
        try:
            for _ in responses:
                if self._stop.is_set():
                    return
        except grpc.RpcError as e:
            if not self._stop.is_set():
                self.error = e

    def start(self) -> None:
        responses = self._stub.LeaseKeepAlive(self._gen())
        self._stream = responses
        for target, args in ((self._schedule, ()), (self._drain, (responses,))):
            t = threading.Thread(target=target, args=args, name="replay-keepalive", daemon=True)
            t.start()
            self._threads.append(t)

    def refresh_now(self) -> None:
        """Refresh every lease at once (before a long pause of the caller, and at the start)."""
        with self._lock:
            ids = list(self._due)
        for lid in ids:
            self._requests.put(pb.LeaseKeepAliveRequest(ID=lid))

    def stop(self) -> None:
        self._stop.set()
        self._requests.put(None)
        if self._stream is not None:
            self._stream.cancel()
        for t in self._threads:
            t.join(timeout=5)


class Replayer:
    """Apply records to the member at ``url`` (a scratch member on loopback; over TLS with its client
    certificate when ``tls`` is given)."""

    def __init__(self, url: str, base_revision: int, lease_ttls: dict[int, int] | None = None,
                 existing_leases: dict[int, int] | None = None, tls: ScratchTLS | None = None) -> None:
        options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        self._channel = (tls.channel(url, options) if tls is not None
                         else grpc.insecure_channel(url.split("://", 1)[-1], options=options))
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._maintenance = rpc.MaintenanceStub(self._channel)
        self._ttls = dict(lease_ttls or {})
        self._existing = dict(existing_leases or {})  # the base snapshot's leases: ID -> TTL
        self._leases: set[int] = set()
        self._pending_revokes: set[int] = set()
        self._keepalive = _KeepAlive(self._lease)
        self.revision = base_revision
        self.stats = ReplayStats(last_revision=base_revision)
        self._began = 0.0

    # -- life --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Keep every lease of the base snapshot alive (at once); check the member holds the base revision."""
        self._began = time.monotonic()
        for lid, ttl in self._existing.items():
            self._leases.add(lid)
            self._keepalive.add(lid, ttl)
        self._keepalive.start()
        try:
            status = self._maintenance.Status(pb.StatusRequest(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise ReplayError(f"the scratch member does not answer: {_detail(e)}") from None
        self._keepalive.refresh_now()
        if int(status.header.revision) != self.revision:
            raise ReplayError(f"the base backup restored to revision {status.header.revision}, but its chain starts "
                              f"after revision {self.revision}: the chain does not belong to this snapshot")

    def close(self) -> None:
        self._keepalive.stop()
        self._channel.close()

    def __enter__(self) -> Replayer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records -----------------------------------------------------------------------------------
    def apply(self, records: Iterable[Record], stop_revision: int) -> bool:
        """Apply ``records`` in order up to ``stop_revision`` (inclusive); ``True`` once it is reached.

        The revocations observed right after the stop revision (before the next revision) are applied too:
        a revoke's deletes are a revision the receiver sees before it sees the revoke itself (and the lease
        is only revoked here once no key is attached to it: see :meth:`settle_revokes`)."""
        for rec in records:
            if isinstance(rec, LeaseRecord):
                if self.revision < stop_revision or rec.op == "revoke":
                    self._lease_record(rec)
                continue
            if rec.revision > stop_revision:
                return True
            self._revision(rec)
        return self.revision >= stop_revision

    def _lease_record(self, rec: LeaseRecord) -> None:
        if rec.op == "grant":
            self._ttls.setdefault(rec.id, rec.ttl)
            self._grant(rec.id, rec.ttl)
        else:
            self._pending_revokes.add(rec.id)

    def _grant(self, lease_id: int, ttl: int) -> None:
        if lease_id in self._leases:
            return
        try:
            self._lease.LeaseGrant(pb.LeaseGrantRequest(ID=lease_id, TTL=ttl), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            if "lease already exists" not in _detail(e):
                raise ReplayError(f"lease {lease_id:x}: LeaseGrant (TTL {ttl}) failed: {_detail(e)}") from None
        self._leases.add(lease_id)
        self._keepalive.add(lease_id, ttl)
        self.stats.lease_grants += 1

    def _revision(self, rec: RevisionRecord) -> None:
        expected = self.revision + 1
        if rec.revision != expected:
            raise ReplayError(f"revision {rec.revision} comes after {self.revision}: the segments are not "
                              "consecutive")
        ops = []
        for e in rec.events:
            if e.type == "put":
                if e.lease and e.lease not in self._leases:
                    ttl = self._ttls.get(e.lease)
                    if ttl is None:
                        ttl = FALLBACK_TTL
                        self.stats.warnings.append(
                            f"lease {e.lease:x} (first used at revision {rec.revision}) was never seen granted: "
                            f"recreated with a TTL of {FALLBACK_TTL}s")
                    self._grant(e.lease, ttl)
                ops.append(pb.RequestOp(request_put=pb.PutRequest(key=e.key, value=e.value, lease=e.lease)))
            else:
                ops.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=e.key)))
        try:
            resp = self._kv.Txn(pb.TxnRequest(success=ops), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise ReplayError(f"revision {rec.revision}: the Txn of its {len(ops)} operations failed: "
                              f"{_detail(e)}") from None
        got = int(resp.header.revision)
        if got != rec.revision:
            raise ReplayError(f"revision {rec.revision} replayed as revision {got} (a lease expired during the "
                              "replay, or the base backup is not the chain's)")
        self.revision = got
        self.stats.revisions += 1
        self.stats.events += len(ops)
        self.stats.last_revision = got

    def settle_revokes(self) -> None:
        """Revoke the leases the source revoked whose keys are all deleted by now (no revision changes)."""
        for lid in sorted(self._pending_revokes):
            try:
                ttl = self._lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid, keys=True), timeout=CALL_TIMEOUT)
            except grpc.RpcError as e:
                raise ReplayError(f"lease {lid:x}: LeaseTimeToLive failed: {_detail(e)}") from None
            if int(ttl.TTL) == -1:  # not (any more) in the member
                self._pending_revokes.discard(lid)
                continue
            if ttl.keys:
                continue  # its keys are deleted at a later revision (or after the target): it lives on
            try:
                resp = self._lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lid), timeout=CALL_TIMEOUT)
            except grpc.RpcError as e:
                raise ReplayError(f"lease {lid:x}: LeaseRevoke failed: {_detail(e)}") from None
            if int(resp.header.revision) != self.revision:
                raise ReplayError(f"revoking lease {lid:x} (no key attached) changed the revision to "
                                  f"{resp.header.revision}")
            self._pending_revokes.discard(lid)
            self._leases.discard(lid)
            self._keepalive.discard(lid)
            self.stats.lease_revokes += 1

    def check(self) -> None:
        """The member's revision is the last one replayed (after every segment) and the keep-alives run."""
        if self._keepalive.error is not None:
            raise ReplayError(f"keeping the leases alive failed: {_detail(self._keepalive.error)}")
        try:
            status = self._maintenance.Status(pb.StatusRequest(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise ReplayError(f"the scratch member does not answer: {_detail(e)}") from None
        if int(status.header.revision) != self.revision:
            raise ReplayError(f"the scratch member is at revision {status.header.revision}, the replay at "
                              f"{self.revision}")

    def finish(self) -> ReplayStats:
        self.settle_revokes()
        self.check()
        self.stats.seconds = time.monotonic() - self._began
        return self.stats

    def snapshot(self, dest: Path) -> int:
        """Stream the member's snapshot (with etcd's sha256 trailer) into ``dest``, fsynced; its size."""
        size = 0
        try:
            with open(dest, "xb") as f:
                for chunk in self._maintenance.Snapshot(pb.SnapshotRequest(), timeout=3600):
                    f.write(chunk.blob)
                    size += len(chunk.blob)
                f.flush()
                os.fsync(f.fileno())
        except grpc.RpcError as e:
            raise ReplayError(f"the snapshot of the replayed member failed: {_detail(e)}") from None
        return size


def _detail(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        details = getattr(e, "details", None)
        if callable(details):
            return str(details() or e)
    return str(e)

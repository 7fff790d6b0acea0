"""Record, at backup time, what a restore drill must reproduce: the source member's ``HashKV`` at the snapshot's
revision, and the live keys it served at that revision.

``HashKV(rev=R)`` hashes the key history up to R (from the compaction on); the member moves on after the
snapshot, but the hash at R stays what it was as long as R is not compacted. It is asked of the member
the snapshot came from as soon as the stream ended, while the snapshot is verified and made durable
(:class:`HashKVProbe`): R is then read from the snapshot's last revision key (a few pages), and asked again
should the structure walk find another revision. Failing to measure it
(the revision compacted meanwhile, a user without the root role, a timeout) does not fail the backup:
the manifest then has no ``hash_kv`` and a warning says why; a drill of that backup compares the
revision and key counts only, and says that HashKV was not recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import TYPE_CHECKING, NamedTuple

from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.endpoints import Endpoint

if TYPE_CHECKING:
    from etcdwarden.backup.preflight import Candidate
    from etcdwarden.format.manifest import HashKV
    from etcdwarden.snapshot.status import SnapshotStatus

log = logging.getLogger(__name__)

#: HashKV reads the whole key bucket: give a large database time (the client's command timeout is short)
TIMEOUT = 300.0


class Measured(NamedTuple):
    """What :func:`measure` got; :meth:`as_hash_kv` is the manifest's record of it.

    A plain tuple on purpose: the probe runs while the backup walks its snapshot, and building the manifest's
    (pydantic) model here would load pydantic (~9 MiB) during the walk, the backup's peak of memory."""

    hash: int
    revision: int
    compact_revision: int
    keys: int

    def as_hash_kv(self) -> HashKV:
        from etcdwarden.format.manifest import HashKV

        return HashKV(hash=self.hash, revision=self.revision, compact_revision=self.compact_revision, keys=self.keys)


async def measure(client: EtcdClient, ep: Endpoint, revision: int, timeout: float = TIMEOUT) -> Measured:
    """``HashKV`` at ``revision`` and the live key count at it, both asked of the member at ``ep``."""
    hreq = pb.HashKVRequest(revision=revision)
    h = await client.call(ep, lambda m, md, t: m.maintenance.HashKV(hreq, metadata=md, timeout=t), timeout)
    count = await client.range_on(ep, pb.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True,
                                                      revision=revision, serializable=True), timeout)
    # etcd says -1 when nothing was ever compacted
    return Measured(int(h.hash), revision, max(0, int(h.compact_revision)), int(count.count))


class HashKVProbe:
    """:func:`measure` at ``revision``, started now on the client's event loop (``loop``), collected later by
    :meth:`result` from another thread (the backup's commit thread) while the loop keeps running."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: EtcdClient, chosen: Candidate, revision: int | None,
                 timeout: float = TIMEOUT) -> None:
        self.loop, self.client, self.chosen, self.timeout = loop, client, chosen, timeout
        self.revision = revision
        self.future: concurrent.futures.Future[Measured] | None = None
        if revision is not None and revision > 0:
            self.future = self._start(revision)

    def _start(self, revision: int) -> concurrent.futures.Future[Measured]:
        return asyncio.run_coroutine_threadsafe(measure(self.client, self.chosen.endpoint, revision, self.timeout),
                                                self.loop)

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()

    def result(self, status: SnapshotStatus | None, warnings: list[str]) -> HashKV | None:
        """The measure at the backup's revision: the snapshot's own when its structure was walked, else the
        member's revision before the snapshot (``--verify hash``). ``None`` (and a warning) when it cannot be
        had."""
        st = self.chosen.status.status
        revision = status.revision if status is not None else int(st.header.revision) if st is not None else 0
        if revision <= 0:
            self.cancel()
            return None
        if self.future is None or revision != self.revision:
            self.cancel()
            self.revision, self.future = revision, self._start(revision)
        try:
            measured = self.future.result(self.timeout + 30.0)
        except Exception as e:  # never fails the backup: the field is optional, and a warning says why
            self.future.cancel()
            if isinstance(e, concurrent.futures.TimeoutError):
                why = f"no answer within {self.timeout:.0f}s"
            else:
                why = str(e) if isinstance(e, EtcdwardenError) else f"{type(e).__name__}: {e}"
            warnings.append(f"HashKV at revision {revision} was not recorded ({why}): a restore drill of this "
                            "backup compares its revision and key counts only")
            log.warning("HashKV at revision %d not recorded: %s", revision, why)
            return None
        return measured.as_hash_kv()

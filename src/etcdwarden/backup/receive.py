"""``etcdwarden receive REPO``: capture every revision of the cluster into segments, continuously.

Like ``pg_receivewal``: a long-running process that extends the repository's recoverable window
(:mod:`etcdwarden.repository.window`) as the cluster changes.

1. **One receiver per repository**: the lease (:mod:`.receive_lease`); a second receiver refuses (exit 3).
2. **The base**: the newest complete full backup of this cluster in the repository, when its chain goes
   on (not broken, not closed), its revision is exact (the backup walked the snapshot's structure) and it is
   younger than ``full_every``: the receiver resumes at its chain's last durable revision + 1. Otherwise it
   takes a full backup first (:func:`etcdwarden.backup.run.take_backup`) and starts a new chain.
3. **The watch**: the whole keyspace from the next revision, on any member (another one if that member
   goes away, from the last revision received + 1). Every revision becomes one record, with the wall-clock
   time it was received and every event (lease IDs included), in order; the lease table is polled
   (``LeaseLeases``, ``LeaseTimeToLive``): a new lease becomes a grant record (with its granted TTL), a
   vanished one a revoke record; a lease first met on an event is looked up before its revision is recorded
   (a lease already gone then, granted and revoked while no receiver ran, is recorded with TTL 0: unknown).
   At the start of each chain, every lease of the cluster is recorded as granted (the receiver cannot tell
   which the base backup already holds: a replay keeps a lease it already has).
4. **Segments** close every ``segment_seconds`` or ``segment_bytes`` and are written in order by one writer
   (data, then manifest: :mod:`.segments`); the state object then records the durable revision.
   Progress requests to the watch confirm an idle cluster's revision, so the window's end time advances
   even when nothing changes.
5. **Stopping** (SIGTERM, SIGINT: the task is cancelled): the open segment is closed and written, the lease
   released. A crash (SIGKILL) loses only what was not yet durable; the next run resumes after the last
   durable segment: no gap, no overlap.
6. **A compacted start**: when the next revision to capture was compacted (the receiver was stopped too
   long), the chain is closed (its last segment's manifest says ``closes_chain: compacted``), the gap is
   reported (:class:`Gap`, through ``notify``), and a new full backup starts a new chain.
7. **Rotation**: once the base is older than ``full_every``, a new full backup is taken while capture goes
   on; when the capture has passed its revision, the old chain is closed (``rotated``) and a new chain
   starts at the new base's revision + 1. The window has no hole: the old chain reaches the new base.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from etcdwarden.backup.receive_lease import ReceiverLease
from etcdwarden.backup.run import BackupOptions, take_backup
from etcdwarden.backup.segments import ClosedSegment, OpenSegment, rewrite_manifest, write_segment
from etcdwarden.errors import (
    Compacted,
    EtcdError,
    EtcdwardenError,
    NoLeader,
    SafetyRefusal,
    Timeout,
    Unreachable,
    UsageError,
)
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, Watch
from etcdwarden.format.names import parse_id
from etcdwarden.format.segment import Event, LeaseRecord, RevisionRecord
from etcdwarden.repository.base import Repository, RepositoryOptions, open_repository
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.repository.window import ChainWindow, read_window

log = logging.getLogger(__name__)

Notify = Callable[[str], None]
MAX_PENDING = 8  # closed segments waiting to be written before the capture waits for the writer
RETRY_MAX = 5.0


@dataclass
class ReceiveOptions:
    repository: str
    repository_options: RepositoryOptions | None = None
    segment_seconds: float = 5.0
    segment_bytes: int = 16 << 20  # compressed bytes
    full_every: float = 86400.0
    lease_seconds: float = 30.0
    compress: str | None = None  # the full backups' snapshots
    member: str | None = None  # the member the full backups are taken from (default: a healthy follower)
    # segments and the receiver's full backups are written unencrypted: refused where backups are encrypted
    allow_plaintext: bool = False

    def __post_init__(self) -> None:
        if self.segment_seconds <= 0 or self.segment_bytes <= 0 or self.full_every <= 0:
            raise UsageError("the segment interval and size and the full-backup interval must be more than 0")
        if self.lease_seconds < 3:
            raise UsageError("the receiver's lease must last at least 3s (it is renewed every third of it)")


@dataclass(frozen=True)
class Gap:
    """Revisions that could not be captured: the chain of ``base`` ends at ``last_revision``; a new chain
    starts from a new full backup (reported as soon as the gap is known, before that backup is taken)."""

    base: str
    last_revision: int
    compact_revision: int

    def __str__(self) -> str:
        return (f"GAP: the revisions after {self.last_revision} were compacted (up to {self.compact_revision}) "
                f"before they were captured: the chain of {self.base} ends at revision {self.last_revision}; a new "
                "chain starts from a new full backup. No point between them can be restored")


@dataclass
class ReceiveStats:
    """What a run did (read it while the receiver runs, or after)."""

    cluster_id: str = ""
    base: str = ""
    durable_revision: int = 0
    segments: int = 0
    revisions: int = 0
    chains: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # seconds from receipt to durable, per revision (last 10k)
    breaks: int = 0  # chains closed by a compaction


@dataclass
class _Base:
    id: str
    revision: int
    time: dt.datetime
    next_revision: int
    previous_sha256: str


def _since(t: dt.datetime) -> float:
    return (dt.datetime.now(dt.UTC) - t).total_seconds()


async def receive(client: EtcdClient, opts: ReceiveOptions, notify: Notify | None = None,
                  stats: ReceiveStats | None = None) -> ReceiveStats:
    """Capture until cancelled (see the module docstring); returns the run's figures once cancelled."""
    repo = open_repository(opts.repository, opts.repository_options)
    try:
        resp = await client.get(b"\x00")
        cluster_id = f"{resp.header.cluster_id:x}"
        if not opts.allow_plaintext:
            await asyncio.to_thread(_refuse_plaintext_beside_encrypted, repo, cluster_id)
        lease = ReceiverLease(repo, cluster_id, opts.lease_seconds)
        await asyncio.to_thread(lease.acquire)
        out = stats or ReceiveStats()
        out.cluster_id = cluster_id
        try:
            await _Receiver(client, repo, opts, lease, notify or (lambda _m: None), out).run()
        finally:
            lease.release()  # (blocking: this may run while the process stops, every task cancelled)
    finally:
        repo.close()
    return out


FORCE_PLAINTEXT = "plaintext"


def _refuse_plaintext_beside_encrypted(repo: Repository, cluster_id: str) -> None:
    """Segments hold every value written (Secrets too) and are not encrypted: where this cluster's backups are,
    writing them would put in clear what the operator chose to encrypt."""
    encrypted = [e.id for e in load_catalog(repo).good
                 if e.cluster_id == cluster_id and e.manifest is not None and e.manifest.snapshot.encryption]
    if encrypted:
        raise SafetyRefusal(
            f"{repo.url} holds encrypted backups of cluster {cluster_id} ({', '.join(encrypted[-3:])}); the receiver "
            "writes its segments and full backups unencrypted, so every value written from now on would be stored "
            "in clear beside them. Receive into a repository of its own, on storage protected accordingly",
            force_flag=f"--force={FORCE_PLAINTEXT}")


class _Receiver:
    def __init__(self, client: EtcdClient, repo: Repository, opts: ReceiveOptions, lease: ReceiverLease,
                 notify: Notify, stats: ReceiveStats) -> None:
        self.client, self.repo, self.opts, self.lease, self.notify = client, repo, opts, lease, notify
        self.stats = stats
        self.cluster_id = lease.cluster_id
        self.queue: asyncio.Queue[ClosedSegment | None] = asyncio.Queue(MAX_PENDING)
        self.writer_error: BaseException | None = None
        self.writer: asyncio.Task[None] | None = None
        self.queued_last = 0  # the last revision of the segments handed to the writer
        self.beat_lock = asyncio.Lock()
        self.base: _Base | None = None
        self.durable = 0  # the last revision written (segments), or the base's
        self.durable_time: dt.datetime | None = None
        self.confirmed: tuple[int, dt.datetime] | None = None  # (revision, when): no later revision then
        self.seg: OpenSegment | None = None
        self.last_seen = 0
        self.leases: set[int] = set()

    # -- the run ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        writer = self.writer = asyncio.create_task(self._writer(), name="etcdwarden-segment-writer")
        try:
            base = await self._resume_or_full()
            while True:
                base = await self._capture(base)
        finally:
            await self._shutdown(writer)

    async def _shutdown(self, writer: asyncio.Task[None]) -> None:
        """Stop the writer once its write in flight is done, then write what is left, in order, and the open
        segment, and record the progress (blocking calls: this runs while the process stops, when every task,
        the writer's included, may have been cancelled)."""
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer
        rest: list[ClosedSegment] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                rest.append(item)
        seg, self.seg = self.seg, None
        # only a segment that follows the last one handed to the writer: one lost on the way (the signal came
        # while the queue was full) would leave a gap; its revisions are captured again by the next run
        if seg is not None and seg.revisions and seg.first_revision == self.queued_last + 1:
            rest.append(seg.close())
        for closed in rest:
            if self.writer_error is not None:
                break
            try:
                self._write_segment(closed)
            except Exception as e:
                self.writer_error = e
                raise
            self._written(closed)
        self.lease.heartbeat(*self._progress())

    async def _resume_or_full(self) -> _Base:
        cat = await asyncio.to_thread(load_catalog, self.repo)
        newest = [e for e in cat.good if e.cluster_id == self.cluster_id]
        # only the newest backup's chain can go on: the others' segments are not read
        window = await asyncio.to_thread(read_window, self.repo, cat, only={e.id for e in newest[-1:]})
        mine = [c for c in window.chains if c.entry.cluster_id == self.cluster_id]
        if mine:
            c = max(mine, key=lambda c: (c.base_revision, c.base_time))
            why = self._why_not_resume(c)
            if why is None:
                last = c.segments[-1].sha256 if c.segments else _anchor(c)
                self.notify(f"resuming the chain of full backup {c.base} at revision {c.chain.last_revision + 1}")
                return self._start(_Base(c.base, c.base_revision, c.entry.time, c.chain.last_revision + 1, last))
            self.notify(f"the newest full backup {c.base} cannot be continued ({why}): taking a full backup")
        else:
            self.notify(f"no full backup of cluster {self.cluster_id} in {self.repo.url}: taking one")
        return self._start(await self._full_backup())

    def _why_not_resume(self, c: ChainWindow) -> str | None:
        if c.broken is not None:
            return f"its chain breaks at {c.broken.at}: {c.broken.problem}"
        if c.closed is not None:
            return f"its chain was closed ({c.closed})"
        if c.entry.manifest is None or c.entry.manifest.status is None:
            return "its revision is not exact: the backup did not walk the snapshot (hash-verified or encrypted)"
        if _since(parse_id(c.base)) > self.opts.full_every:
            return "it is older than the full-backup interval"
        return None

    def _start(self, base: _Base) -> _Base:
        assert self.seg is None or not self.seg.revisions, "the previous chain's open segment was closed"
        self.seg = None  # (lease records only: the new chain records every lease at its start)
        self.base = base
        self.durable = self.last_seen = self.queued_last = base.next_revision - 1
        self.durable_time = None
        self.confirmed = None
        self.stats.base = base.id
        self.stats.durable_revision = self.durable
        self.stats.chains.append(base.id)
        return base

    async def _full_backup(self) -> _Base:
        o = self.opts
        bo = BackupOptions(directory=o.repository, repository_options=o.repository_options, compress=o.compress,
                           verify="full", member=o.member, lock_wait=600.0)
        result = await take_backup(self.client, bo)
        m = result.manifest
        snap = m["snapshot"]["file"]
        # (the store's revision; an empty key bucket says 0: the store's first revision, 1, as the window reads it)
        rev = max(1, int(m["revision"]))
        self.notify(f"full backup {m['timestamp']} taken at revision {rev}")
        return _Base(m["timestamp"], rev, dt.datetime.fromisoformat(m["created_at"]), rev + 1,
                     m["files"][snap]["sha256"])

    # -- capturing one chain ------------------------------------------------------------------------------------
    async def _capture(self, base: _Base) -> _Base:
        """Capture the chain of ``base`` until it ends (rotation or compaction); returns the next base."""
        await self._record_all_leases(base)
        watch = await self._open_watch()
        if isinstance(watch, Compacted):
            return await self._compacted(base, watch)
        o = self.opts
        rotation: asyncio.Task[_Base] | None = None
        next_base: _Base | None = None
        tick = min(o.segment_seconds, 1.0)
        beat = min(o.segment_seconds, o.lease_seconds / 3)  # heartbeats and lease polls
        last_progress = last_leases = last_beat = time.monotonic()
        compacted: Compacted | None = None
        await self._heartbeat()
        try:
            while True:
                self._raise_writer_error()
                try:
                    resp = await watch.next(tick)
                except Compacted as e:
                    compacted = e  # handled below, once the rotation's full backup (if one runs) is stopped:
                    break  # the gap's full backup is the only one
                except (Unreachable, Timeout, NoLeader, EtcdError) as e:
                    self.notify(f"the watch on {watch.ep.raw} failed ({e}): reconnecting")
                    watch.close()
                    reopened = await self._open_watch()
                    if isinstance(reopened, Compacted):
                        compacted = reopened
                        break
                    watch = reopened
                    continue
                if resp is not None:
                    await self._take(resp)
                now = time.monotonic()
                if now - last_progress >= tick:  # cheap: one message; keeps the window's end time fresh
                    last_progress = now
                    with contextlib.suppress(EtcdError):
                        await watch.request_progress()
                if now - last_leases >= beat:
                    last_leases = now
                    await self._poll_leases()
                await self._maybe_close()
                if now - last_beat >= beat:  # also while segments queue up: the lease must not lapse
                    last_beat = now
                    await self._heartbeat()
                if rotation is None and next_base is None and _since(base.time) > o.full_every:
                    rotation = asyncio.create_task(self._full_backup(), name="etcdwarden-receive-full-backup")
                if rotation is not None and rotation.done():
                    try:
                        next_base = rotation.result()
                    except Exception as e:  # a failed backup is retried; capture goes on
                        self.notify(f"the full backup for the next chain failed ({e}); capture goes on, retrying "
                                    "in a minute")
                        base.time = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=o.full_every - 60)
                    rotation = None
                if next_base is not None and self.last_seen >= next_base.revision:
                    await self._close_segment("rotated")
                    await self._drain()
                    await asyncio.to_thread(self._mark_closed, base.id, "rotated")
                    self.notify(f"chain of {base.id} closed at revision {self.last_seen}; the next chain starts "
                                f"from full backup {next_base.id}")
                    return self._start(next_base)
        finally:
            watch.close()
            if rotation is not None:
                rotation.cancel()
                with contextlib.suppress(BaseException):
                    await rotation
        return await self._compacted(base, compacted)

    async def _open_watch(self) -> Watch | Compacted:
        """A watch from the revision after the last one received (retried across members, with backoff), or
        what etcd answered when that revision was compacted."""
        delay = 0.2
        while True:
            create = pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00", start_revision=self.last_seen + 1,
                                           progress_notify=True)
            try:
                return await self.client.watch(create)
            except Compacted as e:
                return e
            except (Unreachable, Timeout, NoLeader) as e:
                log.warning("cannot open the watch: %s", e)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    async def _take(self, resp: pb.WatchResponse) -> None:
        if not resp.events:
            if not resp.created and resp.header.revision == self.last_seen:
                self.confirmed = (self.last_seen, dt.datetime.now(dt.UTC))  # a progress response: nothing newer
            return
        now, mono = dt.datetime.now(dt.UTC), time.monotonic()
        group: list[Event] = []
        rev = 0
        for ev in resp.events:
            kv = ev.kv
            if kv.mod_revision != rev and group:
                await self._add_revision(rev, now, mono, group)
                group = []
            rev = int(kv.mod_revision)
            if kv.lease and kv.lease not in self.leases:
                await self._grant(int(kv.lease), now)
            group.append(Event("delete" if ev.type == 1 else "put", bytes(kv.key), bytes(kv.value),
                               int(kv.create_revision), rev, int(kv.version), int(kv.lease)))
        if group:
            await self._add_revision(rev, now, mono, group)

    async def _add_revision(self, rev: int, now: dt.datetime, mono: float, events: list[Event]) -> None:
        self._open().add(RevisionRecord(rev, now, tuple(events)), mono)
        self.last_seen = rev
        self.confirmed = None
        if self.seg is not None and self.seg.size >= self.opts.segment_bytes:
            await self._close_segment()

    def _open(self) -> OpenSegment:
        if self.seg is None:
            assert self.base is not None
            prev = self.base.previous_sha256
            self.seg = OpenSegment(self.base.id, self.cluster_id, self.last_seen + 1, prev)
        return self.seg

    async def _maybe_close(self) -> None:
        s = self.seg
        if s is not None and s.revisions and time.monotonic() - s.opened >= self.opts.segment_seconds:
            await self._close_segment()

    async def _close_segment(self, closes_chain: str | None = None) -> None:
        s = self.seg
        if s is None or not s.revisions:
            return
        self.seg = None
        closed = s.close(closes_chain)
        assert self.base is not None
        self.base.previous_sha256 = closed.manifest.sha256
        await self.queue.put(closed)
        self.queued_last = closed.manifest.last_revision

    # -- leases ------------------------------------------------------------------------------------------------
    async def _grant(self, lease_id: int, now: dt.datetime) -> None:
        ttl = 0
        with contextlib.suppress(EtcdError):
            ttl = int((await self.client.lease_ttl(lease_id)).grantedTTL)
        self.leases.add(lease_id)
        self._open().add(LeaseRecord("grant", lease_id, now, ttl=max(ttl, 0)))

    async def _record_all_leases(self, base: _Base) -> None:
        self.leases = set()
        await self._poll_leases()

    async def _poll_leases(self) -> None:
        try:
            current = set(await self.client.lease_leases())
        except EtcdError as e:
            log.warning("cannot list the leases: %s", e)
            return
        now = dt.datetime.now(dt.UTC)
        for lease_id in sorted(current - self.leases):
            await self._grant(lease_id, now)
        for lease_id in sorted(self.leases - current):
            self.leases.discard(lease_id)
            self._open().add(LeaseRecord("revoke", lease_id, now))

    # -- durability --------------------------------------------------------------------------------------------
    async def _writer(self) -> None:
        """Write the closed segments in order; then record the durable revision in the state object."""
        while True:
            seg = await self.queue.get()
            if seg is None:
                self.queue.task_done()
                await self._heartbeat()
                return
            write = asyncio.ensure_future(asyncio.to_thread(self._write_segment, seg))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await write  # a write in flight is finished (never half done), then the writer stops
                if write.done() and not write.cancelled() and write.exception() is None:
                    self._written(seg)
                raise
            except Exception as e:
                self.writer_error = e
                raise
            finally:
                self.queue.task_done()
            self._written(seg)
            if self.queue.empty():
                try:
                    await self._heartbeat()
                except Exception as e:  # (a lost lease, the state not writable): the capture must stop too
                    self.writer_error = e
                    raise

    def _write_segment(self, seg: ClosedSegment) -> None:
        """Write one segment if the lease is still ours *now*: a receiver whose lease another took over never
        writes (the new one resumes at the same revision, under the same names)."""
        self.lease.check()
        write_segment(self.repo, seg)

    def _written(self, seg: ClosedSegment) -> None:
        m = seg.manifest
        done = time.monotonic()
        self.durable, self.durable_time = m.last_revision, m.last_time
        self.stats.durable_revision, self.stats.segments = m.last_revision, self.stats.segments + 1
        self.stats.revisions += m.revisions
        self.stats.lags = (self.stats.lags + [done - t for t in seg.revision_times])[-10_000:]

    def _raise_writer_error(self) -> None:
        if self.writer_error is not None:
            raise self.writer_error
        w = self.writer
        if w is not None and w.done() and not w.cancelled():
            raise w.exception() or EtcdwardenError("the segment writer stopped")

    def _progress(self) -> tuple[str | None, int, dt.datetime | None]:
        """(base, durable revision, the last time the cluster was known to be at it) for the state object."""
        c = self.confirmed
        confirmed = c[1] if c is not None and c[0] == self.durable else None
        return (self.base.id if self.base else None), self.durable, confirmed or self.durable_time

    async def _heartbeat(self) -> None:
        async with self.beat_lock:
            await asyncio.to_thread(self.lease.heartbeat, *self._progress())

    # -- a compacted start ---------------------------------------------------------------------------------
    async def _compacted(self, base: _Base, e: Compacted) -> _Base:
        compact = int(getattr(e, "compact_revision", 0))
        await self._close_segment("compacted")
        await self._drain()
        await asyncio.to_thread(self._mark_closed, base.id, "compacted")
        self.stats.breaks += 1
        gap = Gap(base.id, self.last_seen, compact)
        self.stats.gaps.append(gap)
        self.notify(str(gap))  # now: a full backup that fails (or a stop) must not hide the gap
        new = await self._full_backup()
        self.notify(f"after the gap, a new chain starts from full backup {new.id} at revision {new.revision}")
        return self._start(new)

    async def _drain(self) -> None:
        """Wait until every closed segment is written."""
        assert self.writer is not None
        joined = asyncio.ensure_future(self.queue.join())
        try:
            await asyncio.wait([joined, self.writer], return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()
        self._raise_writer_error()

    def _mark_closed(self, base_id: str, why: str) -> None:
        """Mark the chain's last segment as closing it (unless it already does: its open segment was closed
        with the mark; a chain with no segment has nothing to mark)."""
        window = read_window(self.repo, only={base_id})
        try:
            c = window.chain(base_id)
        except UsageError:
            return
        if c.segments and c.segments[-1].closes_chain is None:
            rewrite_manifest(self.repo, c.segments[-1].model_copy(update={"closes_chain": why}))


def _anchor(c: ChainWindow) -> str:
    m = c.entry.manifest
    assert m is not None
    return m.files[m.snapshot_file].sha256


def lag_p99(lags: list[float]) -> float | None:
    if not lags:
        return None
    s = sorted(lags)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


__all__ = ["Gap", "ReceiveOptions", "ReceiveStats", "lag_p99", "receive"]

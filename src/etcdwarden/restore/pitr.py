"""Point-in-time restore: replay a chain up to the target into a scratch member, hand its snapshot on.

Order (nothing outside a private staging directory beside the data directory is touched):

1. resolve the target (:mod:`etcdwarden.repository.window`, refusals in :mod:`.pitr_target`): the full backup,
   the segments and the exact stop revision (for ``--to-time``: the last revision seen at or before the
   time), printed through ``progress`` with the time that revision was seen;
2. prove every segment up to the stop (size and sha256 against its manifest, fetched into the staging
   directory from an object store) *before anything is replayed*, scanning each for the lease grants
   (their TTLs). A segment that is not what its manifest records breaks the chain there: the restore is
   refused (exit 3), naming the last good point;
3. fetch and verify the full backup; ``etcdutl snapshot restore`` it into the staging directory; start a
   :class:`~.scratch_member.ScratchMember` on it (``--unsafe-no-fsync``);
4. replay (:mod:`.replay`): one Txn per source revision, revision checked after each and after every
   segment, stop exactly at the target;
5. snapshot the scratch member into the staging directory and return it as a :class:`~.source.Backup`
   with a manifest derived from the base's (the snapshot's sha256, size and revision; the resources bundle
   of the base), which the normal restore path then verifies and restores unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.format.manifest import FileEntry, SnapshotInfo, Verification
from etcdwarden.format.names import BackupNames
from etcdwarden.format.segment import (
    ChainBreak,
    LeaseRecord,
    SegmentError,
    SegmentManifest,
    decode_record,
    decode_segment,
)
from etcdwarden.repository.base import Repository, RepositoryError, RepositoryOptions, open_repository
from etcdwarden.repository.location import normalize
from etcdwarden.repository.reverify import read_catalog
from etcdwarden.repository.window import ReplayPlan, Window, read_window
from etcdwarden.restore import etcdutl as eu
from etcdwarden.restore.backup import verify
from etcdwarden.restore.pitr_target import Target, fmt_time, refuse_break, resolve_target
from etcdwarden.restore.replay import REPLAY_ETCD_ARGS, Replayer, ReplayStats
from etcdwarden.restore.scratch_member import ScratchMember
from etcdwarden.restore.scratch_tls import create_scratch_tls
from etcdwarden.restore.source import Backup, is_remote, local_path, open_entry
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.scratch import existing_dir, scratch_dir
from etcdwarden.snapshot.source import open_snapshot
from etcdwarden.snapshot.status import iter_bucket
from etcdwarden.snapshot.wal import fields

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
CHUNK = 1 << 20
# compressed bytes decoded at a time: a segment compresses up to ~100x (repeated values), so a bigger read
# would decompress tens of MiB at once; 64 KiB keeps the replay's memory flat whatever the segment
DECODE_CHUNK = 64 << 10
_REV_PREFIX = re.compile(rb'^\{"rev":(\d+),"time":"([^"]+)"')


@dataclass
class PointInTime:
    """What ``restore member|cluster --to-revision|--to-time`` (or the default latest point) asks for."""

    target: Target = field(default_factory=Target)
    etcd: Path | None = None  # the etcd binary of the scratch member
    progress: Progress | None = None


@dataclass
class ProvenSegment:
    manifest: SegmentManifest
    path: Path


@dataclass
class Plan:
    """The resolved point (:class:`~etcdwarden.repository.window.ReplayPlan`), its proven segments, the exact stop
    (revision and the time the receiver saw it) and the lease TTLs the segments record."""

    resolved: ReplayPlan
    segments: list[ProvenSegment]
    stop_time: dt.datetime | None
    lease_ttls: dict[int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.resolved.base.id

    @property
    def base_revision(self) -> int:
        return self.resolved.base_revision

    @property
    def stop_revision(self) -> int:
        return self.resolved.stop_revision

    def describe(self) -> dict[str, Any]:
        return {"base": self.base, "base_revision": self.base_revision, "revision": self.stop_revision,
                "time": fmt_time(self.stop_time) if self.stop_time else None, "segments": len(self.segments),
                "revisions_to_replay": self.stop_revision - self.base_revision}

    def line(self) -> str:
        seen = f", seen at {fmt_time(self.stop_time)}" if self.stop_time else ""
        return (f"point-in-time restore to revision {self.stop_revision}{seen}: full backup {self.base} (revision "
                f"{self.base_revision}) + {self.stop_revision - self.base_revision} revisions from "
                f"{len(self.segments)} segment(s)")


def has_segments(location: str | Path, options: RepositoryOptions | None, backup_id: str | None) -> bool:
    """Whether a repository holds a chain with segments (``backup_id``'s, or any): the default then replays."""
    if not _is_repository(location):
        return False
    with _open(location, options) as repo:
        window = read_window(repo, read_catalog(repo))
        return any((c.segments or c.broken) and (backup_id is None or c.base == backup_id) for c in window.chains)


def _is_repository(location: str | Path) -> bool:
    if is_remote(location):
        from etcdwarden.restore.source import split_object_url

        return split_object_url(normalize(location))[1] is None
    return local_path(location).is_dir()


def _open(location: str | Path, options: RepositoryOptions | None) -> Repository:
    return open_repository(normalize(location) if is_remote(location) else local_path(location).absolute(), options)


def _sha_file(path: Path, m: SegmentManifest) -> None:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    if size != m.size:
        raise SegmentError(f"{m.file}: {size} bytes but its manifest records {m.size}")
    if h.hexdigest() != m.sha256:
        raise SegmentError(f"{m.file}: sha256 {h.hexdigest()} but its manifest records {m.sha256}")


def _fetch(repo: Repository, m: SegmentManifest, staging: Path) -> Path:
    here = repo.local_path(m.file)
    if here is not None:
        if not here.is_file():
            raise SegmentError(f"{m.file}: missing (its manifest {m.name} is there)")
        return here
    dest = staging / m.file
    try:
        with open(dest, "wb") as f:
            for chunk in repo.open_read(m.file):
                f.write(chunk)
    except RepositoryError as e:
        raise SegmentError(f"{m.file}: {e}") from None
    return dest


def read_chunks(path: Path, size: int = CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def _lines(path: Path, name: str) -> Iterator[bytes]:
    import zstandard

    dctx = zstandard.ZstdDecompressor().decompressobj()
    pending = b""
    try:
        for chunk in read_chunks(path, DECODE_CHUNK):
            pending += dctx.decompress(chunk)
            *lines, pending = pending.split(b"\n")
            yield from lines
    except zstandard.ZstdError as e:
        raise SegmentError(f"{name}: not a valid zstd stream: {e}") from None


def _scan(path: Path, m: SegmentManifest, ttls: dict[int, int]) -> None:
    """Collect the lease grants of a segment (their TTLs, for a put whose grant record comes after it)."""
    for line in _lines(path, m.file):
        if line.startswith(b'{"lease"'):
            try:
                rec = decode_record(line)
            except ValueError as e:
                raise SegmentError(f"{m.file}: {e}") from None
            if isinstance(rec, LeaseRecord) and rec.op == "grant":
                ttls.setdefault(rec.id, rec.ttl)


def prepare(repo: Repository, window: Window, resolved: ReplayPlan, staging: Path) -> Plan:
    """Prove (and fetch) the segments up to the stop (see the module docstring); refuse past a bad one."""
    ttls: dict[int, int] = {}
    proven: list[ProvenSegment] = []
    for m in resolved.segments:
        try:
            path = _fetch(repo, m, staging)
            _sha_file(path, m)
            _scan(path, m, ttls)
        except SegmentError as e:
            c = window.chain(resolved.base.id)
            kept = tuple(s for s in c.chain.segments if s.first_revision < m.first_revision)
            chain = dataclasses.replace(c.chain, segments=kept, broken=ChainBreak(m.name, str(e), m.first_revision - 1))
            raise refuse_break(dataclasses.replace(c, chain=chain), resolved.target) from None
        proven.append(ProvenSegment(m, path))
    stop_time = resolved.stop_time
    if stop_time is None:
        stop_time = _stop_time(proven, resolved.stop_revision)
    return Plan(resolved, proven, stop_time, ttls)


def _stop_time(proven: list[ProvenSegment], stop: int) -> dt.datetime | None:
    for p in proven:
        m = p.manifest
        if m.first_revision <= stop <= m.last_revision:
            for line in _lines(p.path, m.file):
                match = _REV_PREFIX.match(line)
                if match is not None and int(match.group(1)) == stop:
                    return dt.datetime.fromisoformat(match.group(2).decode())
    return None


def snapshot_leases(plain: Path) -> dict[int, int]:
    """The leases of a plain snapshot (its ``lease`` bucket, ``leasepb.Lease``): ID -> TTL."""
    leases = {}
    with BoltFile(plain) as db:
        for key, value in iter_bucket(db, b"lease"):
            try:
                f = fields(value)
            except ValueError as e:
                raise EtcdwardenError(f"{plain}: the lease record {key.hex()} cannot be read ({e}): the snapshot's "
                                      "lease bucket is damaged") from None
            if f.get(1):
                leases[f[1]] = max(1, f.get(2, 1))
    return leases


def replay_into(plan: Plan, base: Backup, work: Path, etcd: Path | None, etcdutl: eu.Etcdutl,
                progress: Progress | None = None) -> tuple[Path, ReplayStats]:
    """Restore the base into ``work``, replay the plan on a scratch member, snapshot it; the snapshot's path."""
    data = work / "replay.etcd"
    args = eu.RestoreArgs("replay", "replay=http://127.0.0.1:2380", "http://127.0.0.1:2380", "etcdwarden-replay")
    with open_snapshot(base.snapshot, base.identity, work) as plain:
        existing = snapshot_leases(Path(plain))
        eu.run(args.command(str(etcdutl.path), str(plain), str(data)))
    tls = create_scratch_tls(work)  # no password needed for a base with authentication enabled; no other reader
    member = ScratchMember(data, work / "replay.log", name="replay", etcd=etcd, extra_args=REPLAY_ETCD_ARGS,
                           tls=tls)
    member.start()
    try:
        with Replayer(member.client_url, plan.base_revision, plan.lease_ttls, existing, tls=tls) as rp:
            for seg in plan.segments:
                m = seg.manifest
                done = rp.apply(decode_segment(read_chunks(seg.path, DECODE_CHUNK), m.file), plan.stop_revision)
                rp.settle_revokes()
                rp.check()
                if progress is not None:
                    progress(f"replayed {m.file}: revision {rp.revision} of {plan.stop_revision}")
                if done:
                    break
            stats = rp.finish()
            if rp.revision != plan.stop_revision:
                raise EtcdwardenError(f"the replay ended at revision {rp.revision}, not {plan.stop_revision}: the "
                                      "segments hold fewer revisions than their manifests say")
            out = work / BackupNames(plan.base).snapshot
            rp.snapshot(out)
    finally:
        member.stop()
    shutil.rmtree(data, ignore_errors=True)
    return out, stats


def derived_backup(plan: Plan, base: Backup, snapshot: Path, staging: Path, stack: contextlib.ExitStack) -> Backup:
    """The replayed snapshot as a backup the normal restore path takes: the base's manifest, its snapshot
    entry replaced (sha256, size, revision), the base's resources bundle beside it."""
    m = base.manifest
    assert m is not None
    name = snapshot.name
    h = hashlib.sha256()
    for chunk in read_chunks(snapshot):
        h.update(chunk)
    files = {name: FileEntry(sha256=h.hexdigest(), size=snapshot.stat().st_size)}
    resources = None
    if base.resources is not None and m.resources is not None:
        resources = staging / m.resources.file
        if resources != base.resources:
            shutil.copyfile(base.resources, resources)
        if m.resources.file in m.files:
            files[m.resources.file] = m.files[m.resources.file]
    derived = m.model_copy(update={"snapshot": SnapshotInfo(file=name), "files": files, "revision": plan.stop_revision,
                                   "status": None, "hash_kv": None, "db_sha256": None, "verified": True,
                                   "verification": Verification(sha256_trailer=True)})
    point = f"{base.label}@revision={plan.stop_revision}"
    return Backup(snapshot=snapshot, manifest=derived, where=point, directory=staging, resources=resources,
                  identity=None, notes=list(base.notes) + plan.notes, point=point, replayed=plan.describe(),
                  _stack=stack)


def point_in_time_backup(location: str | Path, pit: PointInTime, *, backup_id: str | None, identity: Path | None,
                         options: RepositoryOptions | None, stage_near: Path, etcdutl: eu.Etcdutl) -> Backup:
    """Resolve, prove, replay: the :class:`Backup` of the point asked for (close it: its staging goes)."""
    if not _is_repository(location):
        raise UsageError("--to-revision/--to-time need a repository (a directory or URL holding backups and their "
                         f"segments), not the file {location}")
    stack = contextlib.ExitStack()
    try:
        staging = stack.enter_context(scratch_dir(existing_dir(stage_near)))
        with _open(location, options) as repo:
            window = read_window(repo, read_catalog(repo))
            if backup_id is not None:  # --id: that full backup's chain only
                window = dataclasses.replace(window, chains=(window.chain(backup_id),))
            plan = prepare(repo, window, resolve_target(repo, window, pit.target), staging)
            if pit.progress is not None:
                pit.progress(plan.line())
            base = stack.enter_context(open_entry(repo, plan.resolved.base, [], identity, staging, True))
        if plan.stop_revision == plan.base_revision:  # the full backup itself: the normal path, nothing replayed
            note = f"the point asked for is the full backup {plan.base} itself: nothing to replay"
            return dataclasses.replace(base, notes=[*base.notes, note], point=f"{base.label}@revision="
                                       f"{plan.stop_revision}", replayed=plan.describe(), _stack=stack)
        verify(base, False, staging)
        snapshot, stats = replay_into(plan, base, staging, pit.etcd, etcdutl, pit.progress)
        plan.notes += stats.warnings
        if pit.progress is not None and stats.revisions:
            rate = f" ({stats.rate:.0f}/s)" if stats.seconds >= 1 else ""
            pit.progress(f"replayed {stats.revisions} revisions ({stats.events} events) in {stats.seconds:.1f}s{rate}")
        return derived_backup(plan, base, snapshot, staging, stack)
    except BaseException:
        stack.close()
        raise


__all__ = ["Plan", "PointInTime", "find_restore_backup", "has_segments", "point_in_time_backup", "prepare",
           "replay_into"]


def find_restore_backup(location: str | Path, backup_id: str | None, identity: Path | None, *,
                        options: RepositoryOptions | None, stage_near: Path, point: PointInTime | None,
                        no_segments: bool, etcdutl: Path | None) -> Backup:
    """The backup a restore starts from: a point in time (``--to-*``, or by default the latest recoverable
    point of a repository with segments), or the full backup alone (``--no-segments``, or no segments)."""
    from etcdwarden.restore.source import find_backup

    asked = point is not None and (point.target.revision is not None or point.target.time is not None)
    if no_segments and asked:
        raise UsageError("--no-segments restores a full backup as it is: it does not go with --to-revision/--to-time")
    if asked or (not no_segments and has_segments(location, options, backup_id)):
        pit = point or PointInTime()
        return point_in_time_backup(location, pit, backup_id=backup_id, identity=identity, options=options,
                                    stage_near=stage_near, etcdutl=eu.find_etcdutl(etcdutl))
    return find_backup(location, backup_id, identity, options=options, stage_near=stage_near)

"""The recoverable window of a repository: each full backup's chain of segments, and what a restore to a
point would use.

Reads through the one catalog (:func:`etcdwarden.repository.catalog.load_catalog`) and the segment format
(:mod:`etcdwarden.format.segment`); writes nothing. The API:

:func:`read_window(repo) <read_window>` → :class:`Window`
    one :class:`ChainWindow` per complete full backup (oldest first): its base revision and time, the
    segments that link to it (:func:`~etcdwarden.format.segment.check_chain`, plus: each segment's data
    file present with the size its manifest records, its cluster the base's; with ``rehash=True`` also
    its sha256), where and why the chain breaks, and its end (revision and time). An unreadable segment
    manifest breaks the chain where it sits. The receiver's state object (:mod:`etcdwarden.format.receiver`)
    extends the end time of the chain it is writing up to the last moment the cluster was confirmed idle.
    :attr:`Window.intervals` merges the chains into the revision ranges that can be restored exactly;
    :attr:`Window.gaps` are the holes between them.

:func:`resolve(repo, window, Target(...)) <resolve>` → :class:`ReplayPlan`
    for a target revision ``R``, time ``T`` (every revision the receiver saw at or before ``T``) or the
    latest point: the base backup (the last full backup at or before the target whose chain reaches it),
    the segment manifests to replay in order (the last one possibly only in part), and the exact revision
    to stop at. A target no chain reaches raises :class:`NotRecoverable`, naming the restorable points
    nearest to it (the last good point before a break).

:func:`read_segment(repo, manifest) <read_segment>` → the verified records of one segment (size and
sha256 checked against its manifest before anything is decoded).

Times: a base backup's point in time is its manifest's ``created_at`` (every revision in its snapshot was
committed by then); a revision's is the wall-clock time the receiver saw it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.format.names import parse
from etcdwarden.format.receiver import STATE_NAME, ReceiverState, ReceiverStateError, load_state
from etcdwarden.format.segment import (
    Chain,
    ChainBreak,
    Record,
    RevisionRecord,
    SegmentError,
    SegmentManifest,
    check_chain,
    decode_segment,
    load_segment_manifest,
    verify_data,
)
from etcdwarden.repository.base import ObjectNotFound, Repository, RepositoryError
from etcdwarden.repository.catalog import Catalog, CatalogEntry, classify, load_catalog


class NotRecoverable(EtcdwardenError):
    """The target point cannot be restored exactly from this repository (the message names the nearest
    restorable points, e.g. the last good point before a break)."""


@dataclass(frozen=True)
class Point:
    """A restorable point: a revision and the time it stands for (``None``: unknown)."""

    revision: int
    time: dt.datetime | None

    def __str__(self) -> str:
        when = f" ({self.time.astimezone(dt.UTC).isoformat().replace('+00:00', 'Z')})" if self.time else ""
        return f"revision {self.revision}{when}"

    def as_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "time": self.time.isoformat() if self.time else None}


@dataclass(frozen=True)
class ChainWindow:
    """One full backup and the segments that follow it (see the module docstring)."""

    entry: CatalogEntry
    base_revision: int
    base_time: dt.datetime
    chain: Chain  # the usable segments, in order; chain.broken says where and why the rest is unusable
    confirmed_at: dt.datetime | None = None  # the receiver saw no revision after the end until then
    receiving: bool = False  # a receiver is writing this chain (per its state object)

    @property
    def base(self) -> str:
        return self.entry.id

    @property
    def segments(self) -> tuple[SegmentManifest, ...]:
        return self.chain.segments

    @property
    def broken(self) -> ChainBreak | None:
        return self.chain.broken

    @property
    def closed(self) -> str | None:
        return self.chain.closed

    @property
    def start(self) -> Point:
        return Point(self.base_revision, self.base_time)

    @property
    def end(self) -> Point:
        t = self.chain.last_time or self.base_time
        if self.confirmed_at is not None and self.confirmed_at > t:
            t = self.confirmed_at
        return Point(self.chain.last_revision, t)

    def covers(self, revision: int) -> bool:
        return self.base_revision <= revision <= self.chain.last_revision

    def as_json(self) -> dict[str, Any]:
        b = self.broken
        return {"base": self.base, "start": self.start.as_json(), "end": self.end.as_json(),
                "segments": len(self.segments), "events": sum(s.events for s in self.segments),
                "size": sum(s.size for s in self.segments), "receiving": self.receiving, "closed": self.closed,
                "broken": None if b is None else {"at": b.at, "problem": b.problem,
                                                  "last_good_revision": b.last_good_revision}}


@dataclass(frozen=True)
class Interval:
    """Revisions ``start..end`` (and every time between theirs) can be restored exactly."""

    start: Point
    end: Point
    bases: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start.as_json(), "end": self.end.as_json(), "bases": list(self.bases)}


@dataclass(frozen=True)
class Window:
    """Every chain of a repository (oldest first) and the recoverable window they make."""

    url: str
    chains: tuple[ChainWindow, ...]
    problems: tuple[str, ...] = ()  # segments that belong to no usable backup, an unreadable receiver state
    state: ReceiverState | None = None

    @property
    def has_segments(self) -> bool:
        return any(c.segments or c.broken for c in self.chains)

    @property
    def intervals(self) -> list[Interval]:
        """The chains merged into the revision ranges that can be restored exactly, oldest first."""
        out: list[Interval] = []
        for c in sorted(self.chains, key=lambda c: (c.base_revision, c.base_time)):
            if out and c.base_revision <= out[-1].end.revision:
                last = out[-1]
                end = c.end if c.end.revision >= last.end.revision else last.end
                out[-1] = Interval(last.start, end, (*last.bases, c.base))
            else:
                out.append(Interval(c.start, c.end, (c.base,)))
        return out

    @property
    def earliest(self) -> Point | None:
        iv = self.intervals
        return iv[0].start if iv else None

    @property
    def latest(self) -> Point | None:
        iv = self.intervals
        return max((i.end for i in iv), key=lambda p: p.revision) if iv else None

    @property
    def gaps(self) -> list[tuple[Point, Point]]:
        """``(after, before)``: no revision strictly between the two points can be restored."""
        iv = self.intervals
        return [(a.end, b.start) for a, b in itertools.pairwise(iv) if b.start.revision > a.end.revision + 1]

    def chain(self, base: str) -> ChainWindow:
        for c in self.chains:
            if c.base == base:
                return c
        raise UsageError(f"{self.url}: no complete full backup {base}")

    def as_json(self) -> dict[str, Any]:
        return {"earliest": self.earliest.as_json() if self.earliest else None,
                "latest": self.latest.as_json() if self.latest else None,
                "gaps": [{"after": a.as_json(), "before": b.as_json()} for a, b in self.gaps],
                "chains": [c.as_json() for c in self.chains], "problems": list(self.problems)}


@dataclass(frozen=True)
class Target:
    """What to restore to: a revision, a time (every revision seen at or before it), or (neither) the latest."""

    revision: int | None = None
    time: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.revision is not None and self.time is not None:
            raise UsageError("give a target revision or a target time, not both")
        if self.revision is not None and self.revision < 1:
            raise UsageError(f"target revision {self.revision}: revisions start at 1")
        if self.time is not None and self.time.tzinfo is None:
            raise UsageError("a target time needs a time zone (RFC 3339: 2026-12-02T10:15:05Z)")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``1234`` (a revision) or an RFC 3339 time (``2026-12-02T10:15:05Z``, fractional seconds, any offset);
        :class:`UsageError` for anything else."""
        t = text.strip()
        if t.isdigit():
            return cls(revision=int(t))
        try:
            when = dt.datetime.fromisoformat(t[:-1] + "+00:00" if t[-1:] in ("Z", "z") else t)
        except ValueError:
            raise UsageError(f"{text!r} is neither a revision nor an RFC 3339 time (2026-12-02T10:15:05Z)") from None
        if when.tzinfo is None:
            raise UsageError(f"{text!r}: an RFC 3339 time needs its offset (Z or +01:00)")
        return cls(time=when.astimezone(dt.UTC))

    def __str__(self) -> str:
        if self.revision is not None:
            return f"revision {self.revision}"
        if self.time is not None:
            return f"time {self.time.astimezone(dt.UTC).isoformat().replace('+00:00', 'Z')}"
        return "the latest point"


@dataclass(frozen=True)
class ReplayPlan:
    """What a restore to a target uses: the base backup, the segments to replay (in order; records of the
    last one after ``stop_revision`` are not replayed), and the exact revision to stop at."""

    base: CatalogEntry
    base_revision: int
    segments: tuple[SegmentManifest, ...]
    stop_revision: int
    stop_time: dt.datetime | None  # the time the stop revision was seen (the base's time if no segment)
    target: Target = field(default_factory=Target)

    @property
    def revisions(self) -> int:
        """Revisions to replay on top of the base backup."""
        return self.stop_revision - self.base_revision

    def as_json(self, repo: Repository | None = None) -> dict[str, Any]:
        return {"target": str(self.target), "base": self.base.id, "base_revision": self.base_revision,
                "stop": Point(self.stop_revision, self.stop_time).as_json(), "revisions": self.revisions,
                "segments": [repo.where(s.file) if repo else s.file for s in self.segments]}


# -- reading ---------------------------------------------------------------------------------------------------


def _base_point(e: CatalogEntry) -> tuple[int, dt.datetime, str] | None:
    m = e.manifest
    if m is None or not e.good:
        return None
    # the store's revision (backups since the receiver: ``revision``), else etcdutl's last-key revision
    rev = max(m.revision or 0, m.snapshot_revision or 0) if m.status is not None else m.revision
    entry = m.files.get(m.snapshot_file)
    if rev is None or entry is None:
        return None
    # a snapshot whose key bucket is empty says revision 0: it is the store's first revision, 1 (which has no event)
    return max(rev, 1), (m.created_at or e.time), entry.sha256


def _segment_names(e: CatalogEntry) -> list[str]:
    return sorted(o.name for o in e.objects if classify(o.name) == ("segment-manifest", e.id))


def _break(chain: Chain, at: str, problem: str, last_good: int) -> Chain:
    keep = tuple(s for s in chain.segments if s.last_revision <= last_good)
    return dataclasses.replace(chain, segments=keep, broken=ChainBreak(at, problem, last_good),
                               closed=chain.closed if keep == chain.segments else None)


def _check_data(repo: Repository, e: CatalogEntry, cluster_id: str | None, chain: Chain, rehash: bool) -> Chain:
    sizes = {o.name: o.size for o in e.objects}
    for s in chain.segments:
        last_good = s.first_revision - 1
        problem: str | None = None
        if cluster_id is not None and s.cluster_id != cluster_id:
            problem = f"captured from cluster {s.cluster_id}, not the base backup's {cluster_id}"
        elif s.file not in sizes:
            problem = f"its data file {s.file} is missing"
        elif sizes[s.file] != s.size:
            problem = f"its data file {s.file} is {sizes[s.file]} bytes but its manifest records {s.size}"
        elif rehash:
            try:
                verify_data(repo.read_bytes(s.file), s)
            except (SegmentError, RepositoryError) as err:
                problem = str(err)
        if problem is not None:
            return _break(chain, s.name, problem, last_good)
    return chain


#: segment manifest name -> (size and modification time when read, the manifest): see :func:`read_window`
ManifestCache = dict[str, tuple[str, SegmentManifest]]


def _chain_of(repo: Repository, e: CatalogEntry, base_rev: int, anchor: str, rehash: bool,
              cache: ManifestCache | None) -> Chain:
    readable: list[SegmentManifest] = []
    unreadable: list[tuple[int, str, str]] = []  # (first revision, name, problem)
    listed = {o.name: f"{o.size}:{o.mtime.isoformat()}" for o in e.objects}
    for name in _segment_names(e):
        hit = cache.get(name) if cache is not None else None
        if hit is not None and hit[0] == listed.get(name):
            readable.append(hit[1])
            continue
        try:
            m = load_segment_manifest(repo.read_bytes(name), name)
            readable.append(m)
            if cache is not None:
                cache[name] = (listed.get(name, ""), m)
        except (SegmentError, RepositoryError) as err:
            n = parse(name)
            unreadable.append((n.revision if n is not None and n.revision is not None else 0, name, str(err)))
    first_bad = min(unreadable) if unreadable else None
    if first_bad is not None:
        readable = [s for s in readable if s.first_revision < first_bad[0]]
    chain = check_chain(e.id, base_rev, anchor, readable)
    if first_bad is not None and chain.broken is None and chain.closed is None:
        last = chain.last_revision
        if first_bad[0] == last + 1:
            chain = _break(chain, first_bad[1], f"unreadable: {first_bad[2]}", last)
        else:
            chain = _break(chain, first_bad[1], f"no segment starts at revision {last + 1} (missing) before "
                                                f"this one, which is unreadable too: {first_bad[2]}", last)
    return _check_data(repo, e, e.cluster_id, chain, rehash)


def read_state(repo: Repository) -> ReceiverState | None:
    """The receiver's state object (``None``: no receiver ever wrote into this repository)."""
    try:
        return load_state(repo.read_bytes(STATE_NAME))
    except ObjectNotFound:
        return None


def read_window(repo: Repository, catalog: Catalog | None = None, *, rehash: bool = False,
                only: set[str] | None = None, cache: ManifestCache | None = None) -> Window:
    """Every chain of the repository (see the module docstring). ``rehash`` reads every segment's data file
    and checks its sha256 (else only presence and size, like a catalog listing). ``only``: the chains of these
    backups only (the others are left out of the window). ``cache``: segment manifests read before, reused
    while their size and modification time are unchanged (one read per new segment for a caller that reads
    the window again and again; a day of 5-second segments is 17,280 manifests)."""
    cat = catalog if catalog is not None else load_catalog(repo)
    problems: list[str] = []
    state: ReceiverState | None = None
    try:
        state = read_state(repo)
    except (ReceiverStateError, RepositoryError) as err:
        problems.append(str(err))
    chains: list[ChainWindow] = []
    for e in cat.entries:
        if only is not None and e.id not in only:
            continue
        names = _segment_names(e)
        point = _base_point(e)
        if point is None:
            if names:
                problems.append(f"{len(names)} segment(s) of backup {e.id} cannot be used: the backup is {e.state}"
                                + (f" ({e.problem})" if e.problem else ""))
            continue
        rev, when, anchor = point
        chain = _chain_of(repo, e, rev, anchor, rehash, cache) if names else Chain(e.id, rev, ())
        confirmed, receiving = None, False
        if state is not None and state.base == e.id and state.cluster_id == e.cluster_id:
            receiving = not state.stopped
            if state.revision == chain.last_revision and chain.broken is None:
                confirmed = state.confirmed_at
        chains.append(ChainWindow(e, rev, when, chain, confirmed, receiving))
    if cache is not None:  # forget the manifests of segments deleted since (retention)
        present = {o.name for e in cat.entries for o in e.objects}
        for name in [n for n in cache if n not in present]:
            del cache[name]
    return Window(cat.url, tuple(_seen_earlier(chains)), tuple(problems), state)


def _seen_earlier(chains: list[ChainWindow]) -> list[ChainWindow]:
    """A base revision an earlier chain captured stands for the time the receiver saw it there, when that is
    before the base backup's own time (a receiver taking its next full backup closes the previous chain
    at the new base's revision: the window goes on without a hole in time)."""
    out = list(chains)
    for i in range(len(out)):
        for prev in out[:i]:
            c = out[i]
            seen = _revision_time(prev, c.base_revision) if prev.covers(c.base_revision) else None
            if seen is not None and seen < c.base_time:
                out[i] = dataclasses.replace(c, base_time=seen)
    return out


def read_segment(repo: Repository, manifest: SegmentManifest) -> Iterator[Record]:
    """The records of one segment, after its data file's size and sha256 are checked against its manifest."""
    data = repo.read_bytes(manifest.file)
    verify_data(data, manifest)
    return decode_segment(data, manifest.file)


# -- resolving a target -------------------------------------------------------------------------------------------


def _nearest(window: Window, target: Target) -> str:
    iv = window.intervals
    if not iv:
        return "the repository holds no complete full backup"
    parts = [f"recoverable: {', '.join(f'{i.start} .. {i.end}' for i in iv)}"]
    for c in window.chains:
        if c.broken is not None:
            parts.append(f"the chain of {c.base} breaks at {c.broken.at} ({c.broken.problem}); its last good point "
                         f"is {c.end}")
        elif c.closed is not None:
            parts.append(f"the chain of {c.base} was closed ({c.closed}) at {c.end}")
    return "; ".join(parts)


def _time_stop(repo: Repository, c: ChainWindow, t: dt.datetime) -> tuple[int, dt.datetime, list[SegmentManifest]]:
    """The last revision of ``c`` seen at or before ``t``, its time, and the segments up to it."""
    stop, when, used = c.base_revision, c.base_time, []
    for s in c.segments:
        if s.first_time > t:
            break
        used.append(s)
        if s.last_time <= t:
            stop, when = s.last_revision, s.last_time
            continue
        for rec in read_segment(repo, s):  # the target falls inside this segment: find its exact revision
            if isinstance(rec, RevisionRecord):
                if rec.time > t:
                    break
                stop, when = rec.revision, rec.time
        break
    return stop, when, used


def _plan(c: ChainWindow, stop: int, when: dt.datetime | None, target: Target) -> ReplayPlan:
    segs = tuple(s for s in c.segments if s.first_revision <= stop)
    return ReplayPlan(c.entry, c.base_revision, segs, stop, when, target)


def _revision_time(c: ChainWindow, revision: int) -> dt.datetime | None:
    if revision == c.base_revision:
        return c.base_time
    for s in c.segments:
        if s.last_revision == revision:
            return s.last_time
    return None  # inside a segment: known once it is read


def resolve(repo: Repository, window: Window, target: Target | None = None) -> ReplayPlan:
    """The base backup, segments and stop revision for ``target`` (default: the latest recoverable point).

    Raises :class:`NotRecoverable` when no chain reaches the target (the message names the recoverable
    intervals and any break's last good point)."""
    target = target or Target()
    chains: Sequence[ChainWindow] = sorted(window.chains, key=lambda c: (c.base_revision, c.base_time))
    if not chains:
        raise NotRecoverable(f"{window.url}: cannot restore to {target}: {_nearest(window, target)}")
    if target.revision is not None:
        r = target.revision
        reach = [c for c in chains if c.covers(r)]
        if not reach:
            first, last = window.earliest, window.latest
            why = f"it is after the latest recoverable point, {last}" if last and r > last.revision else \
                f"it is before the earliest recoverable point, {first}" if first and r < first.revision else \
                "it falls in a gap of the window (nothing was captured then)"
            raise NotRecoverable(f"{window.url}: cannot restore to {target} exactly: {why}; "
                                 f"{_nearest(window, target)}")
        c = reach[-1]  # the last full backup at or before the target whose chain reaches it
        return _plan(c, r, _revision_time(c, r), target)
    if target.time is not None:
        t = target.time
        before = [c for c in chains if c.base_time <= t]
        if not before:
            raise NotRecoverable(f"{window.url}: cannot restore to {target}: it is before the earliest full backup; "
                                 f"{_nearest(window, target)}")
        c = before[-1]
        end_time = c.end.time
        if end_time is None or t > end_time:
            newest = c is chains[-1]
            why = "it is after the latest recoverable point" if newest else \
                "it falls in a gap of the window (nothing was captured then)"
            raise NotRecoverable(f"{window.url}: cannot restore to {target}: {why}, {c.end}; "
                                 f"{_nearest(window, target)}")
        stop, when, _ = _time_stop(repo, c, t)
        return _plan(c, stop, when, target)
    c = max(chains, key=lambda c: (c.chain.last_revision, c.base_revision))
    return _plan(c, c.chain.last_revision, _revision_time(c, c.chain.last_revision), target)


__all__ = ["ChainWindow", "Interval", "ManifestCache", "NotRecoverable", "Point", "ReplayPlan", "Target", "Window",
           "read_segment", "read_state", "read_window", "resolve"]

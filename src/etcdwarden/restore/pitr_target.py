"""Which point a point-in-time restore goes to: the chain (full backup + segments) and the stop revision.

``--to-revision R``: the newest complete full backup at or before R whose chain reaches R.
``--to-time T``: the newest complete full backup taken at or before T; every revision the receiver saw at or
before T (a revision belongs to the time the receiver saw it). Neither: the latest recoverable point (the
chain that reaches furthest; the newest such base on a tie).

Segment manifests are read here (small JSON objects) and linked by :func:`~etcdwarden.format.segment.check_chain`;
the segments' data are proven (size, sha256) and scanned by :mod:`.pitr` before anything is replayed, which
may move the break of a chain earlier (a segment whose bytes are not the ones its manifest records).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from etcdwarden.errors import SafetyRefusal, UsageError
from etcdwarden.format.names import Kind, parse
from etcdwarden.format.segment import (
    Chain,
    ChainBreak,
    SegmentError,
    SegmentManifest,
    check_chain,
    load_segment_manifest,
)
from etcdwarden.repository.base import Repository, RepositoryError
from etcdwarden.repository.catalog import Catalog, CatalogEntry


@dataclass(frozen=True)
class Target:
    """What the operator asked for: a revision, a time, or (neither) the latest recoverable point."""

    revision: int | None = None
    time: dt.datetime | None = None

    @property
    def latest(self) -> bool:
        return self.revision is None and self.time is None

    def label(self) -> str:
        if self.revision is not None:
            return f"revision {self.revision}"
        if self.time is not None:
            return f"time {fmt_time(self.time)}"
        return "the latest recoverable point"


def fmt_time(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z") if t else "?"


def parse_time(text: str) -> dt.datetime:
    """RFC 3339 (``2026-12-02T10:15:05Z``, fractional seconds, any offset); :class:`UsageError` otherwise."""
    raw = text.strip()
    if len(raw) < 20 or raw[10] not in "Tt ":
        raise UsageError(f"--to-time {text!r}: expected RFC 3339, e.g. 2026-12-02T10:15:05Z or "
                         "2026-12-02T11:15:05.250+01:00")
    norm = raw[:-1] + "+00:00" if raw[-1] in "Zz" else raw
    try:
        t = dt.datetime.fromisoformat(norm)
    except ValueError:
        raise UsageError(f"--to-time {text!r}: not a valid RFC 3339 time") from None
    if t.tzinfo is None:
        raise UsageError(f"--to-time {text!r}: give a time zone (Z or an offset such as +02:00)")
    return t.astimezone(dt.UTC)


@dataclass
class ChainView:
    """One complete full backup, its linked segments and where the chain stops being usable."""

    entry: CatalogEntry
    chain: Chain

    @property
    def base(self) -> str:
        return self.entry.id

    @property
    def base_revision(self) -> int:
        return self.chain.base_revision

    @property
    def base_time(self) -> dt.datetime:
        m = self.entry.manifest
        return (m.created_at if m is not None and m.created_at is not None else self.entry.time).astimezone(dt.UTC)

    @property
    def last_revision(self) -> int:
        return self.chain.last_revision

    @property
    def last_time(self) -> dt.datetime:
        return self.chain.last_time or self.base_time

    def describe_end(self) -> str:
        return f"revision {self.last_revision} ({fmt_time(self.last_time)})"


def base_revision(entry: CatalogEntry) -> int:
    m = entry.manifest
    assert m is not None
    rev = m.snapshot_revision if m.snapshot_revision is not None else m.revision
    return int(rev or 0)


def read_chains(repo: Repository, catalog: Catalog, only: str | None = None) -> list[ChainView]:
    """Every complete full backup (or only ``only``'s) with its chain, oldest first."""
    views = []
    for e in catalog.entries:
        if only is not None and e.id != only:
            continue
        m = e.manifest
        if not e.good or m is None:
            continue
        segs: list[SegmentManifest] = []
        broken: ChainBreak | None = None
        for o in e.objects:
            n = parse(o.name)
            if n is None or n.temp or n.kind is not Kind.SEGMENT_MANIFEST:
                continue
            try:
                segs.append(load_segment_manifest(repo.read_bytes(o.name), o.name))
            except (SegmentError, RepositoryError) as err:
                rev = n.revision or 0
                bad = ChainBreak(o.name, f"unreadable manifest: {err}", rev - 1)
                broken = bad if broken is None or bad.last_good_revision < broken.last_good_revision else broken
        snap = m.files.get(m.snapshot_file)
        anchor = snap.sha256 if snap is not None else ""
        usable = [s for s in segs if broken is None or s.first_revision <= broken.last_good_revision]
        chain = check_chain(e.id, base_revision(e), anchor, usable)
        if broken is not None and chain.broken is None and chain.last_revision >= broken.last_good_revision:
            chain = Chain(chain.base, chain.base_revision, chain.segments, broken, chain.closed)
        views.append(ChainView(e, chain))
    return views


@dataclass(frozen=True)
class Resolved:
    """The chain a restore replays and where it stops (``stop_time``: a time target's bound, applied while
    the segments are scanned; the stop revision is then the last revision seen at or before it)."""

    view: ChainView
    stop_revision: int
    stop_time: dt.datetime | None = None

    @property
    def segments(self) -> list[SegmentManifest]:
        return [s for s in self.view.chain.segments if s.first_revision <= self.stop_revision]


def refuse_break(view: ChainView, target: Target) -> SafetyRefusal:
    b = view.chain.broken
    assert b is not None
    return SafetyRefusal(
        f"cannot restore {target.label()}: the chain of backup {view.base} breaks at {b.at} ({b.problem}); the last "
        f"good point is revision {b.last_good_revision}: restore it with --to-revision {b.last_good_revision}, or "
        "an older point", None)


def resolve(views: list[ChainView], target: Target) -> Resolved:
    """The chain and stop revision for ``target`` (see the module docstring); refusals name the window."""
    if not views:
        raise UsageError("no complete full backup to start from")
    window = ", ".join(f"{v.base}: revisions {v.base_revision}..{v.last_revision} "
                       f"({fmt_time(v.base_time)} .. {fmt_time(v.last_time)})" for v in views)
    if target.revision is not None:
        r = target.revision
        candidates = [v for v in views if v.base_revision <= r]
        if not candidates:
            raise UsageError(f"--to-revision {r} is before every full backup (recoverable: {window})")
        covering = [v for v in candidates if r <= v.last_revision]
        if covering:
            return Resolved(covering[-1], r)
        newest = candidates[-1]
        if newest.chain.broken is not None and r > newest.chain.broken.last_good_revision:
            raise refuse_break(newest, target)
        raise UsageError(f"--to-revision {r} is after the end of what was captured (recoverable: {window})")
    if target.time is not None:
        t = target.time
        candidates = [v for v in views if v.base_time <= t]
        if not candidates:
            raise UsageError(f"--to-time {fmt_time(t)} is before every full backup (recoverable: {window})")
        covering = [v for v in candidates if t <= v.last_time]
        if covering:
            v = covering[-1]
            return Resolved(v, v.last_revision, t)
        newest = candidates[-1]
        if newest.chain.broken is not None:
            raise refuse_break(newest, target)
        raise UsageError(f"--to-time {fmt_time(t)} is after the end of what was captured (recoverable: {window}); "
                         "omit --to-time for the latest point")
    best = max(views, key=lambda v: (v.last_revision, v.base))
    if best.chain.broken is not None:
        raise refuse_break(best, target)
    return Resolved(best, best.last_revision)


__all__ = ["ChainView", "Resolved", "Target", "fmt_time", "parse_time", "read_chains", "refuse_break", "resolve"]

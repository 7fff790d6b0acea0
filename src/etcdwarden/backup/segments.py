"""Segments being captured: the open one (records encoded as they arrive) and the writing of closed ones.

:class:`OpenSegment` holds one segment's compressed bytes while it is open (a few seconds of revisions,
at most ``--segment-bytes``); :meth:`OpenSegment.close` makes its manifest. :func:`write_segment` writes a
closed segment through the repository's :class:`~etcdwarden.repository.base.Writer`: the data file first,
then its manifest (the manifest is what makes a segment exist: a crash between the two leaves a data file
the next segment of the same first revision replaces). On a local directory the write holds the
repository's lock, as every writer there does, so a backup starting meanwhile never takes the segment's
``.part`` file for a dead run's.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from dataclasses import dataclass, field

from etcdwarden import __version__
from etcdwarden.format.names import BackupNames
from etcdwarden.format.segment import Receiver, Record, SegmentEncoder, SegmentManifest, dump_segment_manifest
from etcdwarden.repository.base import Repository
from etcdwarden.repository.local import LocalRepository

LOCK_WAIT = 3600.0  # a backup into the same local directory holds its lock while it streams the snapshot


@dataclass(frozen=True)
class ClosedSegment:
    manifest: SegmentManifest
    data: bytes
    revision_times: tuple[float, ...] = ()  # monotonic receive time of each revision (for the lag figures)


@dataclass
class OpenSegment:
    """The segment being filled: records of ``first_revision`` on, of the chain of ``base``."""

    base: str
    cluster_id: str
    first_revision: int
    previous_sha256: str
    opened: float = field(default_factory=time.monotonic)
    enc: SegmentEncoder = field(init=False)
    buf: bytearray = field(default_factory=bytearray)
    received: list[float] = field(default_factory=list)  # monotonic receive time of each revision

    def __post_init__(self) -> None:
        self.enc = SegmentEncoder(self.first_revision)

    def add(self, rec: Record, received: float | None = None) -> None:
        before = self.enc.revisions
        self.buf += self.enc.add(rec)
        if self.enc.revisions > before:
            self.received.append(received if received is not None else time.monotonic())

    @property
    def revisions(self) -> int:
        return self.enc.revisions

    @property
    def last_revision(self) -> int:
        return self.enc.last_revision

    @property
    def size(self) -> int:
        return self.enc.size

    def close(self, closes_chain: str | None = None) -> ClosedSegment:
        """Finish the data and make the manifest (needs at least one revision)."""
        self.buf += self.enc.finish()
        e = self.enc
        assert e.first_time is not None and e.last_time is not None, "a segment holds at least one revision"
        m = SegmentManifest(base=self.base, cluster_id=self.cluster_id, file=BackupNames(self.base).segment(
            self.first_revision), first_revision=self.first_revision, last_revision=e.last_revision,
            revisions=e.revisions, events=e.events, lease_records=e.lease_records, first_time=e.first_time,
            last_time=e.last_time, size=e.size, sha256=e.sha256, previous_sha256=self.previous_sha256,
            created_at=dt.datetime.now(dt.UTC),
            receiver=Receiver(host=socket.gethostname(), pid=os.getpid(), version=__version__),
            closes_chain=closes_chain)
        return ClosedSegment(m, bytes(self.buf), tuple(self.received))


def write_segment(repo: Repository, seg: ClosedSegment) -> None:
    """Write the data file, then the manifest (blocking)."""
    if isinstance(repo, LocalRepository):
        with repo.lock(wait=LOCK_WAIT, create=True):
            _write(repo, seg)
    else:
        _write(repo, seg)


def _write(repo: Repository, seg: ClosedSegment) -> None:
    repo.write_bytes(seg.manifest.file, seg.data)
    repo.write_bytes(seg.manifest.name, dump_segment_manifest(seg.manifest))


def rewrite_manifest(repo: Repository, m: SegmentManifest) -> None:
    """Replace a segment's manifest (to mark the chain closed on its last segment)."""
    if isinstance(repo, LocalRepository):
        with repo.lock(wait=LOCK_WAIT, create=True):
            repo.write_bytes(m.name, dump_segment_manifest(m))
    else:
        repo.write_bytes(m.name, dump_segment_manifest(m))


__all__ = ["ClosedSegment", "OpenSegment", "rewrite_manifest", "write_segment"]

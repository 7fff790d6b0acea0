"""The hook through which a drill replays a backup's segments (continuous backup).

A drill first proves the base backup (revision, keys and HashKV at the backup's revision, every Kubernetes
value). Then, when segments follow the backup (``segment_<ts>_<rev>.json`` in the catalog entry) and a
:class:`SegmentReplay` is given (:attr:`etcdwarden.restore.drill.run.DrillOptions.replay`), it is called
once with the running scratch member; what it returns becomes the drill's ``segments`` check and its
figures. The default replay is :func:`etcdwarden.restore.drill.replay_segments.replay_segments` (the
point-in-time restore's engine); without one the drill says the segments were not replayed: it proves the
base backup only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from etcdwarden.etcd.config import ClientConfig
from etcdwarden.format.drill import Figure
from etcdwarden.repository.base import Repository
from etcdwarden.repository.catalog import CatalogEntry, classify
from etcdwarden.restore.scratch_tls import ScratchTLS


@dataclass(frozen=True)
class ReplayContext:
    repo: Repository
    entry: CatalogEntry
    segments: list[str]  # the backup's segment manifests (object names), in revision order
    client: ClientConfig  # reaches the scratch member (loopback, TLS)
    base_revision: int  # the revision the base backup was proven at
    work: Path | None = None  # the drill's private directory (segments fetched from an object store go there)
    abort: threading.Event | None = None  # set: stop between segments (raise DrillAborted), write nothing
    tls: ScratchTLS | None = None  # the scratch member's TLS (its client certificate)


@dataclass
class ReplayResult:
    last_revision: int  # the member's revision once every segment was replayed
    figures: dict[str, Figure] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # any problem fails the drill
    notes: list[str] = field(default_factory=list)


class SegmentReplay(Protocol):
    def __call__(self, ctx: ReplayContext) -> ReplayResult:
        """Replay ``ctx.segments`` into the scratch member and say how it went (blocking)."""
        ...


def segment_manifests(entry: CatalogEntry) -> list[str]:
    """The segment manifests filed under ``entry``, in revision order (names sort so)."""
    return sorted(o.name for o in entry.objects if classify(o.name) == ("segment-manifest", entry.id))

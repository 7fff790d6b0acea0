"""KeepProven: the newest N backups whose restore drill passed are kept (``--keep-proven N``, ``keepProven``).

A backup is *proven* when its last restore drill (``etcdwarden backups drill``, the daemon's ``drills``)
restored it and found what its manifest recorded. Count and age rules keep the newest backups whatever
they are; this keeps, besides, the newest N proven ones, so that a run of backups that nobody has drilled
yet, or whose drills fail, never pushes out the last backup known to restore. It overrides the keep
rules, ``--max-number`` and the size cap alike (an alert says when the proven backups kept bring the total
over the cap), as the newest verified backup does. 0 turns it off; a backup never drilled is not proven.

Elsewhere retention *prefers* proven backups when it must choose among equal candidates (the backup kept
for a tier's hour, day, week or month; those the ``--min-keep`` floor rescues): see
:attr:`etcdwarden.repository.retention.base.Item.preference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from etcdwarden.errors import UsageError
from etcdwarden.repository.retention.base import NEUTRAL, Item, Names

DEFAULT_KEEP_PROVEN = 1


@dataclass(frozen=True)
class KeepProven:
    keep_proven: int = DEFAULT_KEEP_PROVEN
    names: Names = field(default=NEUTRAL, compare=False)

    def __post_init__(self) -> None:
        if self.keep_proven < 0:
            raise UsageError(f"{self.names.keep_proven} must not be negative (got {self.keep_proven})")

    def protect(self, items: Sequence[Item]) -> dict[str, str]:
        """The newest ``keep_proven`` proven items of ``items`` (newest first) -> why each is kept."""
        proven = [i for i in items if i.proven][: self.keep_proven]
        return {i.id: f"one of the newest {self.keep_proven} backups proven by a restore drill "
                      f"({self.names.keep_proven})" for i in proven}

"""RetentionSize: the verified backups kept never total more than ``max_size_gib`` GiB (OpenShift
``maxSizeOfBackupsGb``, default 10; the unit is GiB = 1024³ bytes, stated as such everywhere).

Newest first, backups are kept while the running total stays within the cap; the first one that would
exceed it and every older one are deleted (so an older backup is never kept in place of a newer one).
The single exception: the newest verified backup is never deleted; if it alone exceeds the cap it is
kept and an alert is raised (OpenShift deletes it, and a failed next run then leaves zero backups).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from etcdwarden.errors import UsageError
from etcdwarden.repository.retention.base import GIB, Item, gib

DEFAULT_MAX_SIZE_GIB = 10.0


@dataclass(frozen=True)
class RetentionSize:
    max_size_gib: float = DEFAULT_MAX_SIZE_GIB

    def __post_init__(self) -> None:
        if not self.max_size_gib > 0:
            raise UsageError(f"--max-size-gib must be more than 0 (got {self.max_size_gib})")

    @property
    def cap(self) -> int:
        return int(self.max_size_gib * GIB)

    def limit(self, kept: Sequence[Item], now: dt.datetime) -> tuple[dict[str, str], list[str]]:
        drop: dict[str, str] = {}
        alerts: list[str] = []
        if not kept:
            return drop, alerts
        total = kept[0].size
        if total > self.cap:
            alerts.append(f"the newest verified backup {kept[0].id} alone is {gib(total)}, over the size cap of "
                          f"{self.max_size_gib:g} GiB: it is kept (the newest backup is never deleted); raise "
                          "--max-size-gib or shrink the database (compact + defrag)")
        overflow = total > self.cap
        for item in kept[1:]:
            if not overflow and total + item.size <= self.cap:
                total += item.size
                continue
            overflow = True
            drop[item.id] = f"keeping it would exceed the size cap of {self.max_size_gib:g} GiB (--max-size-gib)"
        return drop, alerts

"""RetentionSize: the verified backups kept never total more than ``max_size_gib`` GiB (OpenShift
``maxSizeOfBackupsGb``, default 10; the unit is GiB = 1024³ bytes, stated as such everywhere).

Newest first, backups are kept while the running total stays within the cap; the first one that would
exceed it and every older one are deleted (so an older backup is never kept in place of a newer one).
The single exception: the newest verified backup is never deleted; if it alone exceeds the cap it is
kept and an alert is raised (OpenShift deletes it, and a failed next run then leaves zero backups).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from etcdwarden import units
from etcdwarden.errors import UsageError
from etcdwarden.repository.retention.base import GIB, NEUTRAL, Item, Names, gib

DEFAULT_MAX_SIZE_GIB = 10.0


@dataclass(frozen=True)
class RetentionSize:
    max_size_gib: float = DEFAULT_MAX_SIZE_GIB
    names: Names = field(default=NEUTRAL, compare=False)

    def __post_init__(self) -> None:
        n = self.max_size_gib
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0 \
                or n * GIB > units.MAX_SIZE:
            raise UsageError(f"{self.names.max_size} must be a finite size above 0 and at most 1024PiB (got {n!r})")

    @classmethod
    def of_bytes(cls, cap: int, names: Names = NEUTRAL) -> RetentionSize:
        """A cap given in bytes (``--max-size 10GiB``); exact, since GiB is a power of two."""
        return cls(cap / GIB, names)

    @property
    def cap(self) -> int:
        return int(self.max_size_gib * GIB)

    @property
    def cap_text(self) -> str:
        return units.format_size(self.cap)

    def limit(self, kept: Sequence[Item], now: dt.datetime) -> tuple[dict[str, str], list[str]]:
        drop: dict[str, str] = {}
        alerts: list[str] = []
        if not kept:
            return drop, alerts
        total = kept[0].size
        if total > self.cap:
            alerts.append(f"the newest verified backup {kept[0].id} alone is {gib(total)}, over the size cap of "
                          f"{self.cap_text}: it is kept (the newest backup is never deleted); raise "
                          f"{self.names.max_size} or shrink the database (compact + defrag)")
        overflow = total > self.cap
        for item in kept[1:]:
            if not overflow and total + item.size <= self.cap:
                total += item.size
                continue
            overflow = True
            drop[item.id] = f"keeping it would exceed the size cap of {self.cap_text} ({self.names.max_size})"
        return drop, alerts

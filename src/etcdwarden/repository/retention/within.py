"""KeepWithin: keep every verified backup younger than a duration (``--keep-within 7d``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from etcdwarden.errors import UsageError
from etcdwarden.repository.retention.base import NEUTRAL, Item, Names, format_duration


@dataclass(frozen=True)
class KeepWithin:
    within: dt.timedelta
    names: Names = field(default=NEUTRAL, compare=False)

    def __post_init__(self) -> None:
        if self.within <= dt.timedelta(0):
            raise UsageError(f"{self.names.keep_within} must be a positive duration")

    def select(self, items: Sequence[Item], now: dt.datetime) -> dict[str, str]:
        """Backups younger than the duration, and those whose chain of segments reaches into it (the window
        of point-in-time restore starts at the full backup before it)."""
        out = {i.id: f"younger than {format_duration(self.within)} ({self.names.keep_within})"
               for i in items if now - i.time < self.within}
        for i in items:
            if i.id not in out and i.until is not None and now - i.until < self.within:
                out[i.id] = f"its chain of segments reaches into the last {format_duration(self.within)} " \
                            f"({self.names.keep_within})"
        return out

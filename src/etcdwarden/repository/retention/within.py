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
        return {i.id: f"younger than {format_duration(self.within)} ({self.names.keep_within})"
                for i in items if now - i.time < self.within}

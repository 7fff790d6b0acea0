"""Tiered keeping, like Gardener's exponential policy: the latest backup in each hourly, daily, weekly
and monthly bucket.

``Tiered(hourly=24, daily=7, weekly=4, monthly=12)`` keeps, for each of the last 24 clock hours (the
current one included), the newest verified backup taken in that hour; likewise for the last 7 calendar
days, the last 4 ISO weeks (Monday to Sunday) and the last 12 calendar months. Buckets are in UTC and
counted back from ``now``; a tier set to 0 is off. Gardener's default corresponds to
``hourly=24, daily=7, weekly=4`` (it also keeps everything of the current hour: use ``--keep-within 1h``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from etcdwarden.errors import UsageError
from etcdwarden.repository.retention.base import NEUTRAL, Item, Names


def _hour(t: dt.datetime) -> int:
    return int(t.timestamp() // 3600)


def _day(t: dt.datetime) -> int:
    return t.date().toordinal()


def _week(t: dt.datetime) -> int:
    return (t.date().toordinal() - 1) // 7  # ordinal 1 (0001-01-01) is a Monday


def _month(t: dt.datetime) -> int:
    return t.year * 12 + t.month - 1


_TIERS: tuple[tuple[str, Callable[[dt.datetime], int]], ...] = (
    ("hourly", _hour), ("daily", _day), ("weekly", _week), ("monthly", _month))


@dataclass(frozen=True)
class Tiered:
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    names: Names = field(default=NEUTRAL, compare=False)

    def __post_init__(self) -> None:
        for name, _ in _TIERS:
            if getattr(self, name) < 0:
                raise UsageError(f"{self.names.tier_name(name)} must not be negative")
        if not any(getattr(self, name) for name, _ in _TIERS):
            raise UsageError("tiered retention needs at least one tier above 0 ("
                             + ", ".join(self.names.tier_name(n) for n, _ in _TIERS) + ")")

    def select(self, items: Sequence[Item], now: dt.datetime) -> dict[str, str]:
        now = now.astimezone(dt.UTC)
        out: dict[str, str] = {}
        for name, key in _TIERS:
            count = getattr(self, name)
            if not count:
                continue
            current = key(now)
            seen: set[int] = set()
            for i in items:  # newest first: the first backup met in a bucket is that bucket's latest
                b = key(i.time.astimezone(dt.UTC))
                if current - count < b <= current and b not in seen:
                    seen.add(b)
                    out.setdefault(i.id, f"latest backup of its {name[:-2] if name != 'daily' else 'day'} "
                                         f"({self.names.tier_name(name)}: {count})")
        return out

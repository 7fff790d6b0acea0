"""What every retention policy works on: backups as (ID, time, size), newest first, and a clock.

Retention is pure: it reads a list of catalog entries and ``now`` and returns which IDs to delete and
why; nothing here touches a repository. Sizes are bytes; caps are stated in GiB (1 GiB = 1024³ bytes).

Messages name each setting through :class:`Names`: neutral words by default ("the maximum number of
backups"); the CLI passes its flags (:data:`etcdwarden.cli.backups_cmd` ``--max-number``), the daemon its
configuration keys (``keepLast``), so a message always names what the reader can change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from etcdwarden import units
from etcdwarden.errors import UsageError

GIB = units.GIB


@dataclass(frozen=True)
class Names:
    """What messages call each retention setting (``tier`` is a template with ``{tier}``: hourly, daily...)."""

    max_number: str = "the maximum number of backups"
    max_size: str = "the size cap"
    keep_within: str = "the keep-within period"
    tier: str = "the {tier} tier"
    min_keep: str = "the minimum number of backups kept"
    keep_proven: str = "the number of proven backups kept"
    incomplete_grace: str = "the grace period of incomplete backups"

    def tier_name(self, tier: str) -> str:
        return self.tier.format(tier=tier)

    def keep_rules(self) -> str:
        tiers = "/".join(self.tier_name(t) for t in ("hourly", "daily", "weekly", "monthly"))
        return f"{self.keep_within} / {tiers}"


NEUTRAL = Names()


@dataclass(frozen=True)
class Item:
    """One verified-complete backup as retention sees it; ``proven``: its last restore drill passed,
    ``unproven``: it failed (or its record is unreadable); neither: never drilled."""

    id: str
    time: dt.datetime
    size: int
    proven: bool = False
    unproven: bool = False
    until: dt.datetime | None = None  # continuous backup: when the last segment of its chain was written

    @property
    def preference(self) -> int:
        """Which backup retention keeps when it must choose between otherwise equal ones (lower first): a
        proven one, then one never drilled, then one whose drill failed."""
        return 0 if self.proven else 2 if self.unproven else 1


class KeepPolicy(Protocol):
    """Selects backups to keep; a backup no keep policy selects is deleted (when any is configured)."""

    def select(self, items: Sequence[Item], now: dt.datetime) -> dict[str, str]:
        """``items`` newest first; returns ID -> why it is kept."""
        ...


class LimitPolicy(Protocol):
    """Caps what is kept; never drops ``kept[0]`` (the newest)."""

    def limit(self, kept: Sequence[Item], now: dt.datetime) -> tuple[dict[str, str], list[str]]:
        """``kept`` newest first; returns (ID -> why it is deleted, alert messages)."""
        ...


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def parse_duration(text: str, allow_zero: bool = False) -> dt.timedelta:
    """``90m``, ``24h``, ``7d``, ``2w``, ``1d12h`` -> timedelta (:mod:`etcdwarden.units`' grammar; > 0 unless
    ``allow_zero``). Raises UsageError."""
    try:
        seconds = units.parse_duration(text)
    except units.UnitError as e:
        raise UsageError(str(e)) from None
    if seconds == 0 and not allow_zero:
        raise UsageError(f"{text!r}: the duration must be more than 0")
    return dt.timedelta(seconds=seconds)


def format_duration(d: dt.timedelta) -> str:
    return units.format_duration(d.total_seconds())

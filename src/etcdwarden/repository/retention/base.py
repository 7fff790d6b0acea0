"""What every retention policy works on: backups as (ID, time, size), newest first, and a clock.

Retention is pure: it reads a list of catalog entries and ``now`` and returns which IDs to delete and
why; nothing here touches a repository. Sizes are bytes; caps are stated in GiB (1 GiB = 1024³ bytes).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from etcdwarden.errors import UsageError

GIB = 1024**3
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Item:
    """One verified-complete backup as retention sees it."""

    id: str
    time: dt.datetime
    size: int


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
    """``90m``, ``24h``, ``7d``, ``2w``, ``1d12h`` -> timedelta (whole text must parse, > 0 unless allowed)."""
    t = text.strip().lower().replace(" ", "")
    pos = 0
    total = 0.0
    for m in _DURATION_RE.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not t or pos != len(t) or total < 0 or (total == 0 and not allow_zero):
        raise UsageError(f"{text!r} is not a duration (e.g. 90m, 24h, 7d, 2w, 1d12h)")
    return dt.timedelta(seconds=total)


def format_duration(d: dt.timedelta) -> str:
    s = int(d.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0 and s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"

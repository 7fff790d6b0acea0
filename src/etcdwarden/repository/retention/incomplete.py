"""Clean-up of failed backups: objects of an incomplete backup (no manifest, or a listed file missing)
or of an unverified one (``verified`` is not true) are deleted once nothing has touched them for a grace
period (default 24 h), so a backup still being written is never removed. They never count for retention.
A backup whose manifest cannot be read, or whose files no longer match it (``corrupt``, found by
re-hashing), is never deleted automatically (it is reported instead: it is evidence, and possibly the
only copy of something).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from etcdwarden.errors import UsageError
from etcdwarden.repository.catalog import CORRUPT, CatalogEntry
from etcdwarden.repository.retention.base import NEUTRAL, Names, format_duration

DEFAULT_GRACE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class IncompleteCleanup:
    grace: dt.timedelta = DEFAULT_GRACE
    names: Names = field(default=NEUTRAL, compare=False)

    def __post_init__(self) -> None:
        if self.grace < dt.timedelta(0):
            raise UsageError(f"{self.names.incomplete_grace} must not be negative")

    def plan(self, entries: Sequence[CatalogEntry], now: dt.datetime) -> tuple[dict[str, str], dict[str, str],
                                                                               list[str]]:
        """(ID -> why deleted, ID -> why left alone, alerts) for every entry that is not complete."""
        delete: dict[str, str] = {}
        leave: dict[str, str] = {}
        alerts: list[str] = []
        for e in entries:
            if e.good:
                continue
            if e.state == "unreadable":
                leave[e.id] = f"manifest unreadable ({e.problem}); never deleted automatically"
                alerts.append(f"backup {e.id}: {e.problem}; inspect it and remove it with `etcdwarden backups delete`")
                continue
            if e.state == CORRUPT:
                leave[e.id] = f"corrupt ({e.problem}); not counted, never deleted automatically"
                alerts.append(f"backup {e.id} is corrupt: {e.problem}; it is not counted as a backup; inspect it "
                              "and remove it with `etcdwarden backups delete`")
                continue
            age = now - e.last_modified
            if age >= self.grace:
                delete[e.id] = f"{e.state} ({e.problem}) for more than {format_duration(self.grace)}"
            else:
                leave[e.id] = f"{e.state}, within the {format_duration(self.grace)} grace period (may be in progress)"
        return delete, leave, alerts

"""RetentionNumber: keep exactly ``max_number`` verified backups (OpenShift ``maxNumberOfBackups``, default 15).

Run after a successful backup, so the count is exact (OpenShift prunes before the new backup and keeps
N+1). Only verified-complete backups are counted; failed ones never push a good one out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from etcdwarden.errors import UsageError
from etcdwarden.repository.retention.base import NEUTRAL, Item, Names

DEFAULT_MAX_NUMBER = 15


@dataclass(frozen=True)
class RetentionNumber:
    max_number: int = DEFAULT_MAX_NUMBER
    names: Names = field(default=NEUTRAL, compare=False)

    def __post_init__(self) -> None:
        if self.max_number < 1:
            raise UsageError(f"{self.names.max_number} must be at least 1 (got {self.max_number})")

    def limit(self, kept: Sequence[Item], now: dt.datetime) -> tuple[dict[str, str], list[str]]:
        drop = {i.id: f"beyond the newest {self.max_number} verified backups ({self.names.max_number})"
                for i in kept[self.max_number:]}
        return drop, []

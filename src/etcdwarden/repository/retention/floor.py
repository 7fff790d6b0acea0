"""MinKeep: a floor on the number of verified backups kept (``--min-keep N``, ``minKeep``).

Age-based keeping (``--keep-within``, tiered) would delete every backup once backups keep failing for
longer than the window; the floor keeps the newest N verified backups whatever their age. It does not
override ``--max-number`` (a floor above the cap is refused) nor the size cap (which is a hard ceiling;
an alert says when the floor cannot be met). A floor of 0 or 1 adds nothing: the newest verified backup
is never deleted anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from etcdwarden.errors import UsageError
from etcdwarden.repository.retention.base import NEUTRAL, Item, Names


@dataclass(frozen=True)
class MinKeep:
    min_keep: int
    names: Names = field(default=NEUTRAL, compare=False)

    def __post_init__(self) -> None:
        if self.min_keep < 0:
            raise UsageError(f"{self.names.min_keep} must not be negative (got {self.min_keep})")

    def rescue(self, items: Sequence[Item], kept: set[str]) -> dict[str, str]:
        """IDs (newest first among those not kept) to keep so that ``min_keep`` are kept."""
        out: dict[str, str] = {}
        missing = self.min_keep - len(kept)
        for i in items:
            if missing <= 0:
                break
            if i.id not in kept:
                out[i.id] = f"kept by the floor of {self.min_keep} verified backups ({self.names.min_keep})"
                missing -= 1
        return out

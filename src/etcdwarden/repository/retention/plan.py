"""Combine the policies into one plan: which backups to delete, which to keep, and why.

Order of application, over verified-complete backups only, newest first:

1. keep rules (``--keep-within``, tiered): when any is set, a backup none of them selects is deleted;
   the ``--min-keep`` floor then keeps the newest ones up to N;
2. ``--max-number`` (RetentionNumber), then ``--max-size-gib`` (RetentionSize) cap what is left;
3. the newest verified backup is never deleted, whatever the rules say.

Failed backups (incomplete, unverified) are handled apart (:mod:`.incomplete`): never counted, deleted
after the grace period. With no rule at all, RetentionNumber's default (15) applies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import UsageError
from etcdwarden.repository.catalog import CatalogEntry
from etcdwarden.repository.retention.base import NEUTRAL, Item, KeepPolicy, LimitPolicy, Names
from etcdwarden.repository.retention.floor import MinKeep
from etcdwarden.repository.retention.incomplete import IncompleteCleanup
from etcdwarden.repository.retention.number import RetentionNumber
from etcdwarden.repository.retention.size import RetentionSize
from etcdwarden.repository.retention.tiered import Tiered
from etcdwarden.repository.retention.within import KeepWithin

NEWEST = "the newest verified backup (never deleted)"


@dataclass
class RetentionConfig:
    number: RetentionNumber | None = None
    size: RetentionSize | None = None
    within: KeepWithin | None = None
    tiered: Tiered | None = None
    min_keep: MinKeep | None = None
    incomplete: IncompleteCleanup = field(default_factory=IncompleteCleanup)
    names: Names = NEUTRAL  # what messages call each setting: the caller's flags or configuration keys

    def __post_init__(self) -> None:
        if self.number is None and self.size is None and self.within is None and self.tiered is None:
            self.number = RetentionNumber()
        # every policy speaks of its setting as the caller names it
        self.number = dataclasses.replace(self.number, names=self.names) if self.number else None
        self.size = dataclasses.replace(self.size, names=self.names) if self.size else None
        self.within = dataclasses.replace(self.within, names=self.names) if self.within else None
        self.tiered = dataclasses.replace(self.tiered, names=self.names) if self.tiered else None
        self.min_keep = dataclasses.replace(self.min_keep, names=self.names) if self.min_keep else None
        self.incomplete = dataclasses.replace(self.incomplete, names=self.names)
        if self.min_keep and self.number and self.min_keep.min_keep > self.number.max_number:
            raise UsageError(f"{self.names.min_keep} {self.min_keep.min_keep} is above {self.names.max_number} "
                             f"{self.number.max_number}")

    def keep_policies(self) -> list[KeepPolicy]:
        return [p for p in (self.within, self.tiered) if p is not None]

    def limit_policies(self) -> list[LimitPolicy]:
        return [p for p in (self.number, self.size) if p is not None]


@dataclass
class RetentionPlan:
    delete: dict[str, str] = field(default_factory=dict)  # ID -> reason, oldest first
    keep: dict[str, str] = field(default_factory=dict)  # verified IDs kept -> reason, newest first
    leave: dict[str, str] = field(default_factory=dict)  # failed backups not deleted (yet) -> reason
    alerts: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"delete": [{"id": k, "reason": v} for k, v in self.delete.items()],
                "keep": [{"id": k, "reason": v} for k, v in self.keep.items()],
                "leave": [{"id": k, "reason": v} for k, v in self.leave.items()],
                "alerts": self.alerts}


def plan_retention(entries: Sequence[CatalogEntry], config: RetentionConfig, now: dt.datetime) -> RetentionPlan:
    plan = RetentionPlan()
    items = sorted((Item(e.id, e.time, e.size) for e in entries if e.good), key=lambda i: i.id, reverse=True)
    deleted: dict[str, str] = {}
    if items:
        newest = items[0]
        keep_rules = config.keep_policies()
        reasons: dict[str, str] = {}
        if keep_rules:
            for rule in keep_rules:
                for k, v in rule.select(items, now).items():
                    reasons.setdefault(k, v)
            if config.min_keep is not None:
                for k, v in config.min_keep.rescue(items, set(reasons) | {newest.id}).items():
                    reasons.setdefault(k, v)
            reasons.setdefault(newest.id, NEWEST)
            for i in items:
                if i.id not in reasons:
                    deleted[i.id] = f"not selected by any keep rule ({config.names.keep_rules()})"
        kept = [i for i in items if i.id not in deleted]
        for limit in config.limit_policies():
            drop, alerts = limit.limit(kept, now)
            drop.pop(newest.id, None)
            plan.alerts.extend(alerts)
            deleted.update(drop)
            kept = [i for i in kept if i.id not in drop]
        floor = config.min_keep.min_keep if config.min_keep else 0
        if len(kept) < min(floor, len(items)):
            plan.alerts.append(f"only {len(kept)} verified backups fit under the size cap ({config.names.max_size}); "
                               f"the floor of {floor} ({config.names.min_keep}) cannot be met")
        for i in kept:
            plan.keep[i.id] = NEWEST if i.id == newest.id else reasons.get(i.id, "within the limits")
    bad_delete, plan.leave, bad_alerts = config.incomplete.plan(entries, now)
    deleted.update(bad_delete)
    plan.alerts.extend(bad_alerts)
    plan.delete = {k: deleted[k] for k in sorted(deleted)}
    return plan

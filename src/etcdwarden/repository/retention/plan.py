"""Combine the policies into one plan: which backups to delete, which to keep, and why.

Order of application, over verified-complete backups only, newest first:

1. keep rules (``--keep-within``, tiered): when any is set, a backup none of them selects is deleted;
   the ``--min-keep`` floor then keeps the newest ones up to N;
2. ``--max-number`` (RetentionNumber), then ``--max-size-gib`` (RetentionSize) cap what is left;
3. the newest verified backup is never deleted, whatever the rules say; neither are the newest
   ``--keep-proven`` backups a restore drill proved (:mod:`.proven`, default 1; an alert says when they
   bring the total over the size cap).

Where retention must choose between otherwise equal backups it prefers proven ones (:mod:`.proven`).

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
from etcdwarden.repository.catalog import CatalogEntry, classify
from etcdwarden.repository.retention.base import NEUTRAL, Item, KeepPolicy, LimitPolicy, Names, gib
from etcdwarden.repository.retention.floor import MinKeep
from etcdwarden.repository.retention.incomplete import IncompleteCleanup
from etcdwarden.repository.retention.number import RetentionNumber
from etcdwarden.repository.retention.proven import KeepProven
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
    keep_proven: KeepProven | None = None
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
        self.keep_proven = dataclasses.replace(self.keep_proven, names=self.names) if self.keep_proven else None
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


def _chain_until(e: CatalogEntry) -> dt.datetime | None:
    """When the last segment of the backup's chain was written (``None``: no segment). A backup is kept or
    deleted with its chain: every segment carries the backup's ID, so deleting the backup deletes them."""
    times = [o.mtime for o in e.objects if classify(o.name) == ("segment-manifest", e.id)]
    return max(times) if times else None


def plan_retention(entries: Sequence[CatalogEntry], config: RetentionConfig, now: dt.datetime) -> RetentionPlan:
    plan = RetentionPlan()
    items = sorted((Item(e.id, e.time, e.size, e.proven, e.unproven, _chain_until(e)) for e in entries if e.good),
                   key=lambda i: i.id, reverse=True)
    deleted: dict[str, str] = {}
    if items:
        newest = items[0]
        keep_rules = config.keep_policies()
        protected = config.keep_proven.protect(items) if config.keep_proven is not None else {}
        reasons: dict[str, str] = {}
        if keep_rules:
            for rule in keep_rules:
                for k, v in rule.select(items, now).items():
                    reasons.setdefault(k, v)
            for k, v in protected.items():
                reasons.setdefault(k, v)
            if config.min_keep is not None:
                for k, v in config.min_keep.rescue(items, set(reasons) | {newest.id}).items():
                    reasons.setdefault(k, v)
            reasons.setdefault(newest.id, NEWEST)
            for i in items:
                if i.id not in reasons:
                    deleted[i.id] = f"not selected by any keep rule ({config.names.keep_rules()})"
        kept = [i for i in items if i.id not in deleted]
        over_cap: list[str] = []  # proven backups kept although the size cap would drop them
        for limit in config.limit_policies():
            drop, alerts = limit.limit(kept, now)
            drop.pop(newest.id, None)
            for k in protected:
                if drop.pop(k, None) is not None and limit is config.size:
                    over_cap.append(k)
            plan.alerts.extend(alerts)
            deleted.update(drop)
            kept = [i for i in kept if i.id not in drop]
        if over_cap and config.size is not None:
            total = sum(i.size for i in kept)
            plan.alerts.append(f"the proven backup(s) {', '.join(sorted(over_cap))} kept by {config.names.keep_proven} "
                               f"bring the backups kept to {gib(total)}, over the size cap of {config.size.cap_text} "
                               f"({config.names.max_size})")
        floor = config.min_keep.min_keep if config.min_keep else 0
        if len(kept) < min(floor, len(items)):
            plan.alerts.append(f"only {len(kept)} verified backups fit under the size cap ({config.names.max_size}); "
                               f"the floor of {floor} ({config.names.min_keep}) cannot be met")
        for i in kept:
            plan.keep[i.id] = NEWEST if i.id == newest.id else reasons.get(i.id) or protected.get(i.id) \
                or "within the limits"
    bad_delete, plan.leave, bad_alerts = config.incomplete.plan(entries, now)
    deleted.update(bad_delete)
    plan.alerts.extend(bad_alerts)
    plan.delete = {k: deleted[k] for k in sorted(deleted)}
    return plan

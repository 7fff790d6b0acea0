"""Apply retention to a repository, and delete single backups, with the safety rules of the CLI.

Retention never deletes a backup on the strength of one it has not re-proven: before anything verified
is deleted, every backup the plan keeps is hashed again against its manifest (:mod:`.reverify`). A
kept backup that turns out corrupt is marked so, taken out of the count, and the plan is made again
(the next good backup takes its place), until every backup kept is proven.

Prune also aborts the incomplete multipart uploads a killed writer left under an object-store prefix
(names of our own pattern, started longer ago than ``--incomplete-grace``), where the store allows it
(:mod:`.uploads`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import EtcdwardenError, SafetyRefusal
from etcdwarden.repository.base import Repository
from etcdwarden.repository.catalog import (
    CORRUPT,
    Catalog,
    CatalogEntry,
    classify,
    delete_backup,
    internal,
    load_catalog,
)
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.retention.base import format_duration
from etcdwarden.repository.retention.plan import RetentionConfig, RetentionPlan, plan_retention
from etcdwarden.repository.reverify import (
    EntryCheck,
    Verifier,
    VerifyBudgetExceeded,
    VerifyPolicy,
    mark_known_corrupt,
)
from etcdwarden.repository.uploads import PendingUpload, pending_uploads


@contextlib.contextmanager
def repository_lock(repo: Repository, wait: float = 0.0, create: bool = False) -> Iterator[None]:
    """Local repositories: the same directory lock ``etcdwarden backup`` takes. Object stores: none
    (an upload in progress is invisible, and failed leftovers have a grace period)."""
    if isinstance(repo, LocalRepository):
        with repo.lock(wait, create=create):
            yield
    else:
        yield


@dataclass
class PruneResult:
    plan: RetentionPlan
    deleted: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    dry_run: bool = False
    corrupt: dict[str, str] = field(default_factory=dict)  # ID -> what does not match its manifest
    proven: dict[str, str] = field(default_factory=dict)  # kept ID -> how it was re-proven in this run
    notes: list[str] = field(default_factory=list)
    uploads_aborted: list[PendingUpload] = field(default_factory=list)  # (or to abort, in a dry run)
    uploads_left: dict[str, str] = field(default_factory=dict)  # upload name -> why it was left alone

    def as_json(self) -> dict[str, Any]:
        return {**self.plan.as_json(), "dry_run": self.dry_run, "deleted": self.deleted,
                "objects_deleted": self.objects,
                "corrupt": [{"id": k, "problem": v} for k, v in self.corrupt.items()],
                "proven": [{"id": k, "how": v} for k, v in self.proven.items()], "notes": self.notes,
                "uploads_aborted": [u.as_json() for u in self.uploads_aborted],
                "uploads_left": [{"name": k, "reason": v} for k, v in self.uploads_left.items()]}


def describe(check: EntryCheck) -> str:
    """How a backup was re-proven, in a few words."""
    parts = []
    if check.hashed:
        parts.append(f"{len(check.hashed)} file(s) hashed")
    if check.cached:
        oldest = min(check.cached.values())
        parts.append(f"{len(check.cached)} unchanged since hashed at {oldest[:19]}")
    return "; ".join(parts) or "no files"


def proven_plan(catalog: Catalog, config: RetentionConfig, now: dt.datetime, verifier: Verifier) -> RetentionPlan:
    """The retention plan once every backup it keeps (while deleting a verified one) is re-proven.

    Corrupt keepers are marked ``corrupt`` in ``catalog`` (so the plan counts the next good one
    instead). Raises :class:`SafetyRefusal` when the keepers cannot be re-proven within the byte budget."""
    while True:
        plan = plan_retention(catalog.entries, config, now)
        if not any(catalog.get(i).good for i in plan.delete):
            return plan  # nothing verified is deleted: no backup is relied upon
        pending = [i for i in plan.keep if i not in verifier.checks]  # newest first
        if not pending:
            return plan
        for backup_id in pending:
            try:
                verifier.check(catalog.get(backup_id))
            except VerifyBudgetExceeded as e:
                raise SafetyRefusal(
                    f"not pruning {catalog.url}: {e}. Nothing was deleted. The backups re-proven so far are "
                    "remembered, so the next prune continues where this one stopped; or raise "
                    f"{verifier.policy.setting}",
                    force_flag=None) from None


def prune(repo: Repository, config: RetentionConfig, now: dt.datetime | None = None, dry_run: bool = False,
          lock_wait: float = 0.0, verify: VerifyPolicy | None = None) -> PruneResult:
    now = now or dt.datetime.now(dt.UTC)
    with repository_lock(repo, lock_wait):
        catalog = load_catalog(repo)
        cache = mark_known_corrupt(repo, catalog.entries)  # found by an earlier run and unchanged since
        verifier = Verifier(repo, verify, now, cache=cache)
        try:
            plan = proven_plan(catalog, config, now, verifier)
        finally:
            verifier.save(o.name for e in catalog.entries for o in e.objects)
        result = PruneResult(plan, dry_run=dry_run, notes=list(verifier.notes))
        for e in catalog.entries:
            if e.state == CORRUPT:
                result.corrupt[e.id] = e.problem or "does not match its manifest"
        for backup_id, check in verifier.checks.items():
            if check.ok and backup_id in plan.keep:
                result.proven[backup_id] = describe(check)
        if not dry_run:
            for backup_id in plan.delete:  # oldest first
                entry = catalog.get(backup_id)
                assert entry.state != CORRUPT
                result.objects.extend(delete_backup(repo, entry))
                result.deleted.append(backup_id)
        _abort_uploads(repo, config.incomplete.grace, now, dry_run, result)
    return result


def _abort_uploads(repo: Repository, grace: dt.timedelta, now: dt.datetime, dry_run: bool,
                   result: PruneResult) -> None:
    """Abort the incomplete multipart uploads (a killed writer's) of our names older than ``grace``."""
    uploads, note = pending_uploads(repo)
    if note is not None and not isinstance(repo, LocalRepository):
        result.notes.append(note)
    for up in uploads:
        if classify(up.name) is None and not internal(up.name):
            result.uploads_left[up.name] = "not a name etcdwarden writes; left alone"
            continue
        if now - up.initiated < grace:
            result.uploads_left[up.name] = (f"started {up.initiated.isoformat()[:19]}, within the "
                                            f"{format_duration(grace)} grace period (may be in progress)")
            continue
        if not dry_run:
            try:
                repo.abort_upload(up)
            except EtcdwardenError as e:
                result.uploads_left[up.name] = f"could not be aborted: {e}"
                continue
        result.uploads_aborted.append(up)


def delete_one(repo: Repository, backup_id: str, force: bool = False, dry_run: bool = False,
               lock_wait: float = 0.0, verify: VerifyPolicy | None = None) -> tuple[CatalogEntry, list[str]]:
    """Delete one backup; the newest verified one only with ``force``.

    "The newest verified" is re-proven first: if the newest complete backups are corrupt, the one
    asked for may be the newest good one, and it is protected in their place."""
    with repository_lock(repo, lock_wait):
        catalog: Catalog = load_catalog(repo)
        cache = mark_known_corrupt(repo, catalog.entries)
        entry = catalog.get(backup_id)
        if not force and entry.good:
            verifier = Verifier(repo, verify, cache=cache)
            try:
                for candidate in reversed(catalog.good):
                    if verifier.check(candidate).ok:
                        break
            except VerifyBudgetExceeded as e:
                raise SafetyRefusal(f"cannot tell whether {backup_id} is the newest good backup: {e}") from None
            finally:
                verifier.save(o.name for e in catalog.entries for o in e.objects)
        newest = catalog.newest_good()
        if newest is not None and newest.id == entry.id and not force:
            raise SafetyRefusal(f"{backup_id} is the newest verified backup in {repo.url}; deleting it leaves "
                                "only older ones")
        if dry_run:
            return entry, [o.name for o in entry.objects]
        return entry, delete_backup(repo, entry)

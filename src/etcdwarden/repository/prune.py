"""Apply retention to a repository, and delete single backups, with the safety rules of the CLI."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import SafetyRefusal
from etcdwarden.fsutil import dir_lock
from etcdwarden.repository.base import Repository
from etcdwarden.repository.catalog import Catalog, CatalogEntry, delete_backup, load_catalog
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.retention.plan import RetentionConfig, RetentionPlan, plan_retention


@contextlib.contextmanager
def repository_lock(repo: Repository, wait: float = 0.0) -> Iterator[None]:
    """Local repositories: the same directory lock ``etcdwarden backup`` takes. Object stores: none
    (an upload in progress is invisible, and failed leftovers have a grace period)."""
    if isinstance(repo, LocalRepository) and repo.directory.is_dir():
        with dir_lock(repo.directory, wait):
            yield
    else:
        yield


@dataclass
class PruneResult:
    plan: RetentionPlan
    deleted: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        return {**self.plan.as_json(), "dry_run": self.dry_run, "deleted": self.deleted,
                "objects_deleted": self.objects}


def prune(repo: Repository, config: RetentionConfig, now: dt.datetime | None = None, dry_run: bool = False,
          lock_wait: float = 0.0) -> PruneResult:
    now = now or dt.datetime.now(dt.UTC)
    with repository_lock(repo, lock_wait):
        catalog = load_catalog(repo)
        plan = plan_retention(catalog.entries, config, now)
        result = PruneResult(plan, dry_run=dry_run)
        if dry_run:
            return result
        for backup_id in plan.delete:  # oldest first
            result.objects.extend(delete_backup(repo, catalog.get(backup_id)))
            result.deleted.append(backup_id)
    return result


def delete_one(repo: Repository, backup_id: str, force: bool = False, dry_run: bool = False,
               lock_wait: float = 0.0) -> tuple[CatalogEntry, list[str]]:
    """Delete one backup; the newest verified one only with ``force``."""
    with repository_lock(repo, lock_wait):
        catalog: Catalog = load_catalog(repo)
        entry = catalog.get(backup_id)
        newest = catalog.newest_good()
        if newest is not None and newest.id == entry.id and not force:
            raise SafetyRefusal(f"{backup_id} is the newest verified backup in {repo.url}; deleting it leaves "
                                "only older ones")
        if dry_run:
            return entry, [o.name for o in entry.objects]
        return entry, delete_backup(repo, entry)

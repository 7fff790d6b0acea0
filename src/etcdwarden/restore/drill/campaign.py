"""``backups drill``: choose the backups of a repository to drill, drill each, write each one's record.

Which backups: the one of ``--id``; or, by default, the newest complete one; or, with
``--all-unproven``, every complete backup without a passing drill younger than ``--max-age`` (7 days).
Only complete backups are drilled (an unverified, incomplete or corrupt one is not a backup to restore).

Each drill's record (:mod:`etcdwarden.format.drill`) is written beside its backup as ``drill_<ts>.json``
through the repository's writer (a temporary name, then the final one: never half a record), replacing
the previous one. It is not written when the backup's manifest disappeared meanwhile (retention deleted
the backup during the drill). A failed drill deletes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.errors import EtcdwardenError
from etcdwarden.format.drill import DrillRecord, dump
from etcdwarden.format.names import BackupNames
from etcdwarden.repository.base import Repository, RepositoryError, RepositoryOptions, open_repository
from etcdwarden.repository.catalog import Catalog, CatalogEntry, NoBackup
from etcdwarden.repository.reverify import read_catalog
from etcdwarden.restore.drill.run import DrillOptions, drill_backup

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = dt.timedelta(days=7)


class NotDrillable(EtcdwardenError):
    """The backup asked for is not complete (unverified, incomplete, unreadable or corrupt): nothing to drill."""


@dataclass
class DrillOutcome:
    backup: str
    record: DrillRecord
    location: str | None = None  # where the record was written
    write_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.record.passed and self.write_error is None

    def as_json(self) -> dict[str, Any]:
        return {"backup": self.backup, "ok": self.ok, "record": self.location, "write_error": self.write_error,
                **self.record.as_json()}


@dataclass
class DrillReport:
    repository: str
    outcomes: list[DrillOutcome] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # backup ID -> why it was not drilled
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every drill passed and its record was written (no drill at all: nothing failed)."""
        return all(o.ok for o in self.outcomes)

    def as_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "ok": self.ok, "drills": [o.as_json() for o in self.outcomes],
                "skipped": [{"id": k, "reason": v} for k, v in self.skipped.items()], "notes": self.notes}


def proven_within(e: CatalogEntry, max_age: dt.timedelta, now: dt.datetime) -> bool:
    """A passing drill of ``e`` finished less than ``max_age`` ago."""
    return e.proven and e.drill is not None and e.drill.age(now) < max_age


def select(cat: Catalog, backup_id: str | None = None, all_unproven: bool = False,
           max_age: dt.timedelta = DEFAULT_MAX_AGE, now: dt.datetime | None = None
           ) -> tuple[list[CatalogEntry], dict[str, str]]:
    """The backups to drill (oldest first) and, with ``all_unproven``, those passed over and why."""
    if backup_id is not None:
        e = cat.get(backup_id)
        if not e.good:
            raise NotDrillable(f"backup {e.id} in {cat.url} is {e.state} ({e.problem}): only a complete backup is "
                               "drilled")
        return [e], {}
    if not all_unproven:
        newest = cat.newest_good()
        if newest is None:
            raise NoBackup(f"{cat.url}: no complete backup to drill (see `etcdwarden backups list`)")
        return [newest], {}
    now = now or dt.datetime.now(dt.UTC)
    chosen: list[CatalogEntry] = []
    skipped: dict[str, str] = {}
    for e in cat.good:
        if proven_within(e, max_age, now):
            assert e.drill is not None
            skipped[e.id] = f"proven by a drill {e.drill.finished_at.isoformat(timespec='seconds')}"
        else:
            chosen.append(e)
    return chosen, skipped


def write_record(repo: Repository, entry: CatalogEntry, record: DrillRecord) -> DrillOutcome:
    """Write ``record`` beside its backup (atomically), unless the backup is gone meanwhile."""
    out = DrillOutcome(entry.id, record)
    name = BackupNames(entry.id).drill
    try:
        if entry.manifest_name is None or repo.stat(entry.manifest_name) is None:
            out.write_error = "the backup was deleted while it was drilled; no record written"
            return out
        repo.write_bytes(name, dump(record))
    except RepositoryError as e:
        out.write_error = f"the drill record could not be written: {e}"
        return out
    out.location = repo.where(name)
    return out


def run_drills(location: str | Path, options: DrillOptions, *, backup_id: str | None = None,
               all_unproven: bool = False, max_age: dt.timedelta = DEFAULT_MAX_AGE,
               repository_options: RepositoryOptions | None = None, now: dt.datetime | None = None) -> DrillReport:
    """Drill the selected backups of the repository at ``location`` (any URL), one at a time (blocking)."""
    with open_repository(location, repository_options) as repo:
        cat = read_catalog(repo)
        entries, skipped = select(cat, backup_id, all_unproven, max_age, now)
        report = DrillReport(repo.url, skipped=skipped)
        if all_unproven and not entries:
            report.notes.append(f"every complete backup has a passing drill younger than {max_age}" if skipped
                                else "no complete backup to drill")
        for entry in entries:
            record = drill_backup(repo, entry, options)
            outcome = write_record(repo, entry, record)
            report.outcomes.append(outcome)
            level = logging.INFO if record.passed else logging.ERROR
            log.log(level, "drill of backup %s: %s%s", entry.id, record.result,
                    f" ({'; '.join(record.problems)})" if record.problems else "",
                    extra={"event": "drill", "backup": entry.id, "result": record.result})
        return report

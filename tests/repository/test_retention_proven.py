"""Retention and restore drills: ``--keep-proven N`` keeps the newest N proven backups whatever the other rules
say, and where retention must choose between otherwise equal backups it keeps a proven one."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from etcdwarden.format import drill as drill_format
from etcdwarden.format.drill import DrillRecord
from etcdwarden.format.manifest import Tool
from etcdwarden.format.names import BackupNames
from etcdwarden.repository.catalog import CatalogEntry
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.retention import (
    GIB,
    KeepProven,
    MinKeep,
    RetentionConfig,
    RetentionNumber,
    RetentionSize,
    Tiered,
    plan_retention,
)
from tests.cli_helpers import cli
from tests.repository.fake import put_backup
from tests.repository.test_retention import entry

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def record(backup_id: str, passed: bool = True) -> DrillRecord:
    return DrillRecord(backup=backup_id, result="passed" if passed else "failed", started_at=T0, finished_at=T0,
                       tool=Tool(name="etcdwarden", version="0"), problems=[] if passed else ["figures: differ"])


def drilled(e: CatalogEntry, passed: bool = True) -> CatalogEntry:
    e.drill = record(e.id, passed)
    return e


def hourly(n: int, size: int = GIB // 4) -> list[CatalogEntry]:
    return [entry(T0 + dt.timedelta(hours=h), size) for h in range(n)]


def test_keep_proven_outlasts_the_count() -> None:
    es = hourly(10)
    drilled(es[1])
    drilled(es[3])
    drilled(es[4], passed=False)
    now = T0 + dt.timedelta(hours=10)
    plan = plan_retention(es, RetentionConfig(number=RetentionNumber(3), keep_proven=KeepProven(2)), now)
    assert set(plan.keep) == {es[9].id, es[8].id, es[7].id, es[3].id, es[1].id}
    assert "proven by a restore drill" in plan.keep[es[1].id]
    assert es[4].id in plan.delete  # a failed drill protects nothing (and deletes nothing by itself)
    # 1 (the default of the CLI and the daemon) keeps the newest proven only; 0 and none: the count alone
    plan = plan_retention(es, RetentionConfig(number=RetentionNumber(3), keep_proven=KeepProven(1)), now)
    assert set(plan.keep) == {es[9].id, es[8].id, es[7].id, es[3].id}
    for cfg in (RetentionConfig(number=RetentionNumber(3)), RetentionConfig(number=RetentionNumber(3),
                                                                           keep_proven=KeepProven(0))):
        assert set(plan_retention(es, cfg, now).keep) == {es[9].id, es[8].id, es[7].id}


def test_keep_proven_over_the_size_cap_is_kept_and_said() -> None:
    es = hourly(6, GIB)
    drilled(es[0])
    cfg = RetentionConfig(size=RetentionSize(2.0), keep_proven=KeepProven(1))
    plan = plan_retention(es, cfg, T0 + dt.timedelta(hours=6))
    assert set(plan.keep) == {es[5].id, es[4].id, es[0].id}
    assert any("over the size cap" in a and es[0].id in a for a in plan.alerts)


def test_tiers_and_the_floor_prefer_proven_backups() -> None:
    # four backups a day for three days; one of each older day proven (not its latest), one drill failed
    es = [entry(T0 + dt.timedelta(days=d, hours=h)) for d in range(3) for h in (1, 7, 13, 19)]
    drilled(es[1])  # day 0, 07:00
    drilled(es[6])  # day 1, 13:00
    drilled(es[11], passed=False)  # day 2, 19:00: the newest, its drill failed
    now = T0 + dt.timedelta(days=2, hours=20)
    plan = plan_retention(es, RetentionConfig(tiered=Tiered(daily=3), keep_proven=KeepProven(0)), now)
    assert es[1].id in plan.keep and es[6].id in plan.keep
    assert es[3].id in plan.delete and es[7].id in plan.delete  # the days' latest, not proven
    assert "proven by a restore drill" in plan.keep[es[1].id]
    # day 2: the newest failed its drill; it is kept anyway (the newest is never deleted), but the day's
    # choice is the newest of those never drilled
    assert es[10].id in plan.keep and es[11].id in plan.keep
    # the floor rescues proven backups first
    es2 = hourly(6)
    drilled(es2[0])
    plan = plan_retention(es2, RetentionConfig(tiered=Tiered(hourly=1), min_keep=MinKeep(2)),
                          T0 + dt.timedelta(hours=5, minutes=30))
    assert set(plan.keep) == {es2[5].id, es2[0].id}
    assert "floor" in plan.keep[es2[0].id]


def test_prune_keep_proven_on_a_repository(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path / "repo")
    ids = [f"2026-01-01_{h:02d}0000" for h in range(6)]
    for i in ids:
        put_backup(repo, i)
    repo.write_bytes(BackupNames(ids[0]).drill, drill_format.dump(record(ids[0])))
    repo.write_bytes(BackupNames(ids[1]).drill, drill_format.dump(record(ids[1])))
    repo.write_bytes(BackupNames(ids[2]).drill, drill_format.dump(record(ids[2], passed=False)))
    r = cli("backups", "prune", str(tmp_path / "repo"), "--max-number", "2", "--keep-proven", "2", "--dry-run",
            "-w", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert {k["id"] for k in doc["keep"]} == {ids[5], ids[4], ids[1], ids[0]}
    r = cli("backups", "prune", str(tmp_path / "repo"), "--max-number", "2", "-w", "json")  # default: 1
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert {k["id"] for k in doc["keep"]} == {ids[5], ids[4], ids[1]} and sorted(doc["deleted"]) == [ids[0], ids[2],
                                                                                                     ids[3]]
    # the drill record went with its backup; the survivors' records stay
    left = sorted(p.name for p in (tmp_path / "repo").glob("drill_*"))
    assert left == [f"drill_{ids[1]}.json"]
    listed = json.loads(cli("backups", "list", str(tmp_path / "repo"), "-w", "json").out)["backups"]
    assert {b["id"]: b["proven"] for b in listed} == {ids[5]: None, ids[4]: None, ids[1]: True}

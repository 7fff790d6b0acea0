"""`backups copy` takes a backup's segments and drill record with it: the copy restores to the same points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etcdwarden.format.drill import DrillRecord
from etcdwarden.format.drill import dump as dump_drill
from etcdwarden.format.manifest import Tool
from etcdwarden.format.names import BackupNames
from etcdwarden.repository.base import Repository, open_repository
from etcdwarden.repository.transfer import copy_backups
from etcdwarden.repository.window import Target, read_window, resolve
from tests.cli_helpers import cli
from tests.repository.test_window import B1, T1, _chain, _segment

pytestmark = pytest.mark.unit


def _drill(repo: Repository, backup: str) -> None:
    record = DrillRecord(backup=backup, result="passed", started_at=T1, finished_at=T1,
                         tool=Tool(name="etcdwarden", version="0"))
    repo.write_bytes(BackupNames(backup).drill, dump_drill(record))


def _ends(repo: Repository) -> list[tuple[int, int]]:
    return [(c.start.revision, c.end.revision) for c in read_window(repo, rehash=True).chains]


def test_segments_and_drill_record_follow_the_backup_and_a_second_copy_adds_new_segments(tmp_path: Path) -> None:
    src, dst = open_repository(tmp_path / "src"), open_repository(tmp_path / "dst")
    s1, s2 = _chain(src, B1, T1, 100, (101, 110), (111, 120))
    _drill(src, B1)
    dry = copy_backups(src, dst, dry_run=True)
    assert dry.copied == [B1] and dry.segments == [s1.name, s2.name] and dry.drills == [BackupNames(B1).drill]
    assert not (tmp_path / "dst").exists() or [p.name for p in (tmp_path / "dst").iterdir()] == [".etcdwarden.lock"]

    report = copy_backups(src, dst)
    assert report.copied == [B1] and report.segments == [s1.name, s2.name] and report.notes == []
    assert _ends(dst) == _ends(src) == [(100, 120)]
    plan = resolve(dst, read_window(dst), Target(revision=115))
    assert plan.base.id == B1 and plan.segments == (s1, s2) and plan.stop_revision == 115
    assert (tmp_path / "dst" / BackupNames(B1).drill).read_bytes() == (tmp_path / "src" / BackupNames(B1).drill) \
        .read_bytes()

    # the receiver went on: the next copy skips the backup and adds the new segment only
    s3 = _segment(src, B1, T1, 121, 130, s2.sha256)
    again = copy_backups(src, dst)
    assert again.copied == [] and again.skipped == {B1: "already in the destination"}
    assert again.segments == [s3.name] and again.drills == []
    assert _ends(dst) == [(100, 130)]


def test_a_segment_not_as_recorded_ends_the_chain_in_the_copy_with_a_note(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    repo = open_repository(src)
    s1, s2, _s3 = _chain(repo, B1, T1, 100, (101, 110), (111, 120), (121, 130))
    data = bytearray((src / s2.file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (src / s2.file).write_bytes(bytes(data))
    (src / BackupNames(B1).drill).write_text('{"format": 1, "backup": "not this one"}')
    r = cli("backups", "copy", str(src), str(dst), "-w", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["copied"] == [B1] and doc["segments"] == [s1.name] and doc["drills"] == []
    note, drill_note = doc["notes"]
    assert s2.file in note and "sha256" in note and "up to the one before" in note
    assert "drill record is not copied" in drill_note and not (dst / BackupNames(B1).drill).exists()
    assert not (dst / s2.file).exists() and not (dst / s2.name).exists()
    assert _ends(open_repository(dst)) == [(100, 110)]
    r = cli("backups", "copy", str(src), str(tmp_path / "dst2"))
    assert r.code == 0 and "1 segment(s)" in r.err and s2.file in r.err

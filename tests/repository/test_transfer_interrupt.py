"""``backups copy`` interrupted while the manifest is written: never a manifest whose files were deleted."""

from __future__ import annotations

from pathlib import Path

import pytest

from etcdwarden.format.names import BackupNames
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.transfer import copy_backup
from tests.repository.fake import put_backup

pytestmark = pytest.mark.unit

TS = "2026-03-01_000000"
NAMES = BackupNames(TS)


class InterruptedAfterManifest(LocalRepository):
    """A destination where the signal lands just after the manifest was renamed into place."""

    refuse_delete = False

    def write_bytes(self, name: str, data: bytes) -> None:
        super().write_bytes(name, data)
        if name == NAMES.manifest:
            raise KeyboardInterrupt

    def delete(self, name: str) -> None:
        if self.refuse_delete and name == NAMES.manifest:
            raise OSError("read-only")
        super().delete(name)


def _copy(tmp_path: Path, refuse_delete: bool) -> LocalRepository:
    src = LocalRepository(tmp_path / "src", create=True)
    put_backup(src, TS)
    dst = InterruptedAfterManifest(tmp_path / "dst", create=True)
    dst.refuse_delete = refuse_delete
    with pytest.raises(KeyboardInterrupt):
        copy_backup(src, dst, load_catalog(src).get(TS))
    return dst


def test_interrupt_after_the_manifest_removes_the_manifest_before_its_files(tmp_path: Path) -> None:
    dst = _copy(tmp_path, refuse_delete=False)
    assert sorted(o.name for o in dst.list()) == []
    assert load_catalog(dst).entries == []


def test_a_manifest_that_cannot_be_removed_keeps_its_files(tmp_path: Path) -> None:
    dst = _copy(tmp_path, refuse_delete=True)
    cat = load_catalog(dst)
    assert [(e.id, e.state) for e in cat.entries] == [(TS, "complete")]
    assert {NAMES.snapshot, NAMES.resources, NAMES.manifest} <= {o.name for o in dst.list()}

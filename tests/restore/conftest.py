"""Fixtures for restore tests: backups of real clusters (taken once per session) and helpers."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from etcdwarden.backup.run import BackupOptions, take_backup
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.backup.conftest import dump, load
from tests.tiers import starts


@dataclass
class SavedBackup:
    directory: Path
    manifest: Path
    data: dict[bytes, bytes]
    revision: int

    def copy(self, dest: Path) -> SavedBackup:
        shutil.copytree(self.directory, dest)
        return SavedBackup(dest, dest / self.manifest.name, self.data, self.revision)

    def edit_manifest(self, **changes: object) -> None:
        doc = json.loads(self.manifest.read_text())
        for k, v in changes.items():
            cur = doc
            parts = k.split("__")
            for p in parts[:-1]:
                cur = cur[p]
            cur[parts[-1]] = v
        self.manifest.write_text(json.dumps(doc))

    @property
    def snapshot(self) -> Path:
        return next(self.directory.glob("snapshot_*"))


def backup_of(cluster: LocalCluster, directory: Path, **kw: object) -> SavedBackup:
    async def go() -> Path:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:
            r = await take_backup(c, BackupOptions(directory=directory, **kw))  # type: ignore[arg-type]
            assert r.manifest_path is not None
            return r.manifest_path

    manifest = asyncio.run(go())
    doc = json.loads(manifest.read_text())
    return SavedBackup(directory, manifest, dump(cluster.endpoints), int(doc["revision"]))


@pytest.fixture(scope="session")
@starts("etcd")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SavedBackup]]:
    """A plain backup with a resources bundle and a zstd one of a 1-member cluster holding k8s-like data."""
    base = tmp_path_factory.mktemp("saved")
    res = base / "pki"
    res.mkdir()
    (res / "etcd-pod.yaml").write_text("kind: Pod\n")
    cluster = LocalCluster(base / "src", size=1)
    cluster.start()
    try:
        load(cluster, 300, value_size=256)
        plain = backup_of(cluster, base / "plain", resources=[res])
        zst = backup_of(cluster, base / "zst", compress="zstd")
    finally:
        cluster.stop()
    yield {"plain": plain, "zst": zst}


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and mtime (to prove a directory untouched)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}

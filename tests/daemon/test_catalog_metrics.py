"""The daemon reads repositories through the one catalog reader; its metrics count complete backups only."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

import pytest

from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.metrics import DaemonMetrics
from etcdwarden.daemon.observe import Observer
from etcdwarden.daemon.runner import DefaultRunner
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.reverify import Verifier
from tests.daemon.helpers import daemon_doc
from tests.repository.fake import put_backup

IDS = ["2026-01-01_000000", "2026-01-01_010000", "2026-01-01_020000", "2026-01-01_030000", "2026-01-01_040000"]


@pytest.mark.unit
def test_repository_metrics_count_complete_backups_only(tmp_path: Path) -> None:
    """``etcdwarden_repository_backups`` is documented as complete backups: a failed (no manifest), an unverified
    and a corrupt backup are listed by ``/api/backups`` but neither counted nor summed into the size."""
    repo = LocalRepository(tmp_path / "repo")
    put_backup(repo, IDS[0], size=1000)
    put_backup(repo, IDS[1], size=2000, manifest=False)
    put_backup(repo, IDS[2], size=3000, verified=False)
    put_backup(repo, IDS[3], size=4000)
    put_backup(repo, IDS[4], size=5000)
    snap = tmp_path / "repo" / f"snapshot_{IDS[3]}.db"  # bit rot: same size, other bytes
    data = bytearray(snap.read_bytes())
    data[10] ^= 1
    snap.write_bytes(bytes(data))
    cat = load_catalog(repo)
    verifier = Verifier(repo, use_cache=False, unbounded=True)
    assert not verifier.check(cat.get(IDS[3])).ok
    verifier.save(o.name for e in cat.entries for o in e.objects)

    cfg_path = tmp_path / "d.yaml"
    cfg_path.write_text(daemon_doc(tmp_path / "repo", election=False))
    cfg = load_config([cfg_path])
    runner = DefaultRunner(EtcdClient(ClientConfig.from_strings(["http://127.0.0.1:9"])), cfg)
    metrics = DaemonMetrics("a", "0")
    agent = types.SimpleNamespace(config=cfg, runner=runner, metrics=metrics)
    observer = Observer(agent)  # the parts of an Agent the catalogs need

    entries = asyncio.run(runner.catalog("etcd-backup-pvc"))
    assert {e["id"]: e["state"] for e in entries} == {IDS[0]: "complete", IDS[1]: "incomplete",
                                                      IDS[2]: "unverified", IDS[3]: "corrupt", IDS[4]: "complete"}
    asyncio.run(observer._refresh_catalogs())
    complete = [e for e in entries if e["state"] == "complete"]
    assert metrics.view.repositories == {"etcd-backup-pvc": (2, sum(e["size"] for e in complete))}
    text = metrics.render().decode()
    assert 'etcdwarden_repository_backups{repository="etcd-backup-pvc"} 2.0' in text

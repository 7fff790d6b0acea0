"""The agent's HTTP endpoints and the ``daemon`` command against a real etcd."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from etcdwarden.daemon.config import DEFAULT_LISTEN, AgentSection
from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.service import Daemon
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.conftest import ROOT_PASSWORD
from tests.daemon.helpers import SEED_RECURRING, SEED_SINGLE, arun, daemon_doc, http_get, manifests

METRIC_NAMES = [
    "etcdwarden_daemon_leader 1.0",
    "etcdwarden_backup_last_success_timestamp_seconds{",
    "etcdwarden_backup_last_duration_seconds{",
    "etcdwarden_backup_last_size_bytes{",
    "etcdwarden_backup_last_revision{",
    "etcdwarden_backup_failures_total{",
    "etcdwarden_backup_schedule_interval_seconds{",
    "etcdwarden_prune_failures_total{",
    'etcdwarden_repository_backups{repository="etcd-backup-pvc"} 1.0',
    "etcdwarden_repository_size_bytes{",
    "etcdwarden_etcd_db_size_bytes{",
    "etcdwarden_etcd_db_size_in_use_bytes{",
    "etcdwarden_etcd_db_quota_bytes{",
    "etcdwarden_etcd_db_fragmentation_ratio{",
    "etcdwarden_etcd_db_free_bytes{",
    "etcdwarden_defrag_failures_total",
]


@pytest.mark.unit
def test_listen_is_loopback_by_default() -> None:
    assert AgentSection().listen == DEFAULT_LISTEN == "127.0.0.1:9796"


@arun
async def test_http_endpoints_answer(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    path = tmp_path / "daemon.yaml"
    path.write_text(daemon_doc(repo, etcd1.endpoints, tick="0.1s") + "---\n" + SEED_RECURRING)
    async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as client:
        d = Daemon(load_config([path]), client, agent="web", listen="127.0.0.1:0")
        task = asyncio.create_task(d.run())
        try:
            for _ in range(300):
                if manifests(repo) and d.http.port:
                    code, body = await asyncio.to_thread(http_get, d.http.port, "/readyz")
                    metrics = (await asyncio.to_thread(http_get, d.http.port, "/metrics"))[1]
                    if code == 200 and 'etcdwarden_repository_backups{repository="etcd-backup-pvc"} 1.0' in metrics:
                        break
                await asyncio.sleep(0.05)
            port = d.http.port
            assert d.http.host == "127.0.0.1"
            code, body = await asyncio.to_thread(http_get, port, "/healthz")
            assert code == 200 and json.loads(body) == {"status": "ok", "agent": "web", "leader": True}
            code, body = await asyncio.to_thread(http_get, port, "/readyz")
            assert code == 200 and json.loads(body)["ready"] is True, body
            code, metrics = await asyncio.to_thread(http_get, port, "/metrics")
            assert code == 200
            for name in METRIC_NAMES:
                assert name in metrics, name
            code, body = await asyncio.to_thread(http_get, port, "/api/backups")
            cat = json.loads(body)
            assert code == 200 and cat["errors"] == {}
            (entry,) = cat["repositories"]["etcd-backup-pvc"]
            assert entry["verified"] and entry["revision"] >= 1
            assert entry["manifest"].endswith(".json") and str(repo) in entry["manifest"]
            code, body = await asyncio.to_thread(http_get, port, "/api/backups?repository=nope")
            assert code == 404
            code, body = await asyncio.to_thread(http_get, port, "/api/jobs")
            (job,) = json.loads(body)["jobs"]
            assert job["name"] == "etcd-recurring-backup" and job["state"]["successes"] == 1 and job["next"]
            assert (await asyncio.to_thread(http_get, port, "/nowhere"))[0] == 404
        finally:
            d.request_stop()
            await asyncio.wait_for(task, 15)


def test_daemon_once_cli_runs_due_jobs_then_nothing(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    path = tmp_path / "daemon.yaml"
    path.write_text(daemon_doc(repo, etcd1.endpoints) + "---\n" + SEED_RECURRING + "---\n" + SEED_SINGLE)
    res = cli("daemon", "--once", "--config", str(path), "--agent-name", "cron")
    assert res.code == 0, res.err
    assert "single etcd-single-backup: success" in res.out and "backup etcd-recurring-backup: success" in res.out
    assert "retention failed" in res.err or "retention" not in res.err
    assert len(manifests(repo)) == 2
    for line in res.err.splitlines():  # structured logs: one JSON object per line
        if line.startswith("{"):
            json.loads(line)
    res = cli("-w", "json", "daemon", "--once", "--config", str(path))
    assert res.code == 0 and json.loads(res.out)["note"] == "no job was due"
    assert len(manifests(repo)) == 2


def test_daemon_once_failure_exit_code_and_no_secret_in_logs(etcd_auth: LocalCluster, tmp_path: Path) -> None:
    pw = tmp_path / "password"
    pw.write_text(ROOT_PASSWORD + "\n")
    repo = tmp_path / "repo"
    ok = daemon_doc(repo, etcd_auth.endpoints).replace(
        "etcd:\n", f"etcd:\n  user: root\n  passwordFile: {pw}\n")
    path = tmp_path / "daemon.yaml"
    path.write_text(ok + "---\n" + SEED_SINGLE)
    res = cli("daemon", "--once", "--config", str(path), "--log-level", "debug")
    assert res.code == 0, res.err
    assert ROOT_PASSWORD not in res.err and ROOT_PASSWORD not in res.out
    assert len(manifests(repo)) == 1
    # a failing backup: exit 1, the error in the report
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    bad = ok.replace(f"url: file://{repo}", f"url: file://{blocked}/sub")
    path.write_text(bad + "---\n" + SEED_SINGLE.replace("etcd-single-backup", "second"))
    res = cli("daemon", "--once", "--config", str(path), "--log-level", "debug")
    assert res.code == 1, res.err
    assert "single second: failure" in res.out
    assert ROOT_PASSWORD not in res.err


@pytest.mark.unit
def test_daemon_bad_config_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "daemon.yaml"
    path.write_text(daemon_doc(tmp_path / "r") + "backups:\n  - name: b\n    schedule: nope\n    repository: x\n")
    res = cli("daemon", "--once", "--config", str(path))
    assert res.code == 2
    assert "backups[0].schedule: invalid cron schedule 'nope'" in res.err
    assert "backups[0].repository: unknown repository 'x'" in res.err

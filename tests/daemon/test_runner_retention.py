"""The daemon's default runner against real etcd and a real repository: backups, then exact retention."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.runner import DefaultRunner, PruneOutcome
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.daemon.helpers import daemon_doc, manifests

JOB = ("backups:\n  - name: hourly\n    schedule: '0 * * * *'\n    timeZone: UTC\n"
       "    repository: etcd-backup-pvc\n    retention: {keepLast: 2, minKeep: 1}\n")


def test_backups_then_keep_last_is_exact(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cfg_path = tmp_path / "d.yaml"
    cfg_path.write_text(daemon_doc(repo, endpoints=etcd1.endpoints, election=False) + JOB)
    cfg = load_config([cfg_path])
    job = next(j for j in cfg.backups if j.name == "hourly")

    async def go() -> tuple[list[str], list[list[str]], list[dict[str, object]]]:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            runner = DefaultRunner(c, cfg)
            ids: list[str] = []
            deleted: list[list[str]] = []
            for _ in range(4):
                out = await runner.backup(job)
                assert out.ok and out.manifest is not None
                ids.append(str(out.manifest["timestamp"]))
                pr = await runner.prune(job)
                assert pr.ok and pr.error is None
                deleted.append(pr.deleted)
            return ids, deleted, await runner.catalog("etcd-backup-pvc")

    ids, deleted, catalog = asyncio.run(go())
    assert deleted == [[], [], [ids[0]], [ids[1]]]  # exactly keepLast=2 remain after every run
    assert sorted(p.name for p in manifests(repo)) == [f"backup_{i}.json" for i in ids[2:]]
    assert [e["id"] for e in catalog] == [ids[3], ids[2]]  # newest first
    assert all(e["state"] == "complete" and e["verified"] for e in catalog)


@pytest.mark.unit
def test_once_report_fails_when_retention_failed() -> None:
    import datetime as dt

    from etcdwarden.daemon.jobs import RunRecord
    from etcdwarden.daemon.service import OnceReport
    from etcdwarden.daemon.state import SUCCESS

    slot = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    ok = RunRecord("backup/a", "backup", "a", slot, SUCCESS, 1.0, detail={"prune": {"ok": True, "deleted": []}})
    bad = RunRecord("backup/b", "backup", "b", slot, SUCCESS, 1.0, detail={"prune": {"ok": False, "error": "x"}})
    assert OnceReport(leader=True, records=[ok]).ok
    assert not OnceReport(leader=True, records=[ok, bad]).ok  # a CronJob must not report success


def test_daemon_retention_keeps_good_backup_when_newest_is_corrupt(etcd1: LocalCluster, tmp_path: Path) -> None:
    """Issue 11 item 1 in the daemon: the corrupt newest backup is found before anything is deleted, the
    good older one is kept in its place, the run fails, and the metric the alert uses says so."""
    import datetime as dt
    import os

    from etcdwarden.daemon.jobs import JobExecutor, RunRecord
    from etcdwarden.daemon.metrics import DaemonMetrics, JobInfo
    from etcdwarden.daemon.state import SUCCESS, JobState, MemoryStateStore

    repo = tmp_path / "repo"
    cfg_path = tmp_path / "d.yaml"
    cfg_path.write_text(daemon_doc(repo, endpoints=etcd1.endpoints, election=False)
                        + JOB.replace("{keepLast: 2, minKeep: 1}", "{keepLast: 1, minKeep: 1}"))
    cfg = load_config([cfg_path])
    job = next(j for j in cfg.backups if j.name == "hourly")

    async def go() -> tuple[list[str], JobState, RunRecord]:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            runner = DefaultRunner(c, cfg)
            ids = []
            for _ in range(2):
                out = await runner.backup(job)
                assert out.ok and out.manifest is not None
                ids.append(str(out.manifest["timestamp"]))
            snap = repo / f"snapshot_{ids[1]}.db"
            st_ = snap.stat()
            data = bytearray(snap.read_bytes())
            data[len(data) // 3] ^= 1
            snap.write_bytes(bytes(data))
            os.utime(snap, ns=(st_.st_atime_ns, st_.st_mtime_ns))
            ex = JobExecutor(cfg, runner, MemoryStateStore(), "agent-a")
            st, record = JobState(), RunRecord(job.key, "backup", job.name, dt.datetime.now(dt.UTC), SUCCESS, 1.0)
            await ex._prune(job, st, record)
            catalog = await runner.catalog("etcd-backup-pvc")
            assert {e["id"]: e["state"] for e in catalog} == {ids[1]: "corrupt", ids[0]: "complete"}
            return ids, st, record

    ids, st, record = asyncio.run(go())
    assert record.detail["prune"] is st.prune
    assert st.prune is not None and not st.prune["ok"] and st.prune["corrupt"] == [ids[1]]
    assert st.prune["deleted"] == [] and st.prune_failures == 1 and "corrupt" in st.prune["error"]
    assert sorted(p.name for p in manifests(repo)) == [f"backup_{i}.json" for i in ids]  # both still there
    m = DaemonMetrics("a", "0")
    m.view.jobs = {job.key: (JobInfo(job.key, job.name, "backup", "etcd-backup-pvc"), st)}
    text = m.render().decode()
    assert ('etcdwarden_prune_corrupt_backups{job_name="hourly",kind="backup",repository="etcd-backup-pvc"} 1.0'
            in text)


def test_retention_messages_name_the_daemon_keys_not_the_cli_flags(etcd1: LocalCluster, tmp_path: Path) -> None:
    """Issue 11 item 14: a deletion caused by keepLast says keepLast (it said --max-number); a size alert says
    maxSize; a Backup CR's deletion names its retentionPolicy field."""
    from tests.daemon.helpers import SEED_RECURRING_NUMBER

    repo = tmp_path / "repo"
    cfg_path = tmp_path / "d.yaml"
    jobs = ("backups:\n  - name: last\n    schedule: '0 * * * *'\n    repository: etcd-backup-pvc\n"
            "    retention: {keepLast: 1}\n"
            "  - name: capped\n    schedule: '0 * * * *'\n    repository: etcd-backup-pvc\n"
            "    retention: {maxSize: 1KiB}\n")
    cr = SEED_RECURRING_NUMBER.replace("maxNumberOfBackups: 5", "maxNumberOfBackups: 1")
    cfg_path.write_text(daemon_doc(repo, endpoints=etcd1.endpoints, election=False) + jobs + "---\n" + cr)
    cfg = load_config([cfg_path])
    by_name = {j.name: j for j in cfg.backups}

    async def go() -> dict[str, object]:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            runner = DefaultRunner(c, cfg)
            out: dict[str, object] = {}
            for name in ("last", "capped", "etcd-recurring-backup-number"):
                job = by_name[name]
                for _ in range(2):
                    assert (await runner.backup(job)).ok
                    await asyncio.sleep(1.05)  # backup IDs have a one-second resolution
                out[name] = await runner.prune(job)
            return out

    res = asyncio.run(go())
    last, capped, from_cr = res["last"], res["capped"], res["etcd-recurring-backup-number"]
    assert isinstance(last, PruneOutcome) and isinstance(capped, PruneOutcome) and isinstance(from_cr, PruneOutcome)
    assert last.reasons and all("(keepLast)" in why for why in last.reasons.values()), last.reasons
    assert capped.error is not None and "raise maxSize " in capped.error and "--max" not in capped.error
    assert capped.reasons and all("(maxSize)" in why for why in capped.reasons.values()), capped.reasons
    assert from_cr.reasons and all("(retentionNumber.maxNumberOfBackups)" in why for why in from_cr.reasons.values())
    every = " ".join([*last.reasons.values(), *capped.reasons.values(), *from_cr.reasons.values(), capped.error])
    assert "--" not in every


@pytest.mark.unit
def test_a_verification_budget_refusal_names_the_key_or_the_flag(tmp_path: Path) -> None:
    """Issue 12 (settings named neutrally in library messages): a prune refused by its re-verification budget
    names the daemon's maxVerifyBytes when the daemon caused it (it said the CLI's --max-verify-bytes), and
    --max-verify-bytes on the command line."""
    from typing import cast

    from etcdwarden.errors import SafetyRefusal
    from etcdwarden.repository.local import LocalRepository
    from tests.cli_helpers import cli
    from tests.repository.fake import put_backup

    repo = tmp_path / "repo"
    for ts in ("2026-01-01_000000", "2026-01-02_000000"):
        put_backup(LocalRepository(repo), ts, size=4096)
    cfg_path = tmp_path / "d.yaml"
    cfg_path.write_text(daemon_doc(repo, election=False)
                        + JOB.replace("{keepLast: 2, minKeep: 1}", "{keepLast: 1, maxVerifyBytes: 1000}"))
    cfg = load_config([cfg_path])
    job = next(j for j in cfg.backups if j.name == "hourly")
    with pytest.raises(SafetyRefusal) as e:
        asyncio.run(DefaultRunner(cast(EtcdClient, None), cfg).prune(job))  # prune does not use the client
    assert "(maxVerifyBytes;" in str(e.value) and "raise maxVerifyBytes" in str(e.value), e.value
    assert "--" not in str(e.value)
    r = cli("backups", "prune", str(repo), "--max-number", "1", "--max-verify-bytes", "1000")
    assert r.code == 3 and "raise --max-verify-bytes" in r.err and "Nothing was deleted" in r.err, r.err
    assert len(list(repo.glob("backup_*.json"))) == 2


@pytest.mark.unit
def test_keep_proven_reaches_the_daemons_retention(tmp_path: Path) -> None:
    """Issue 14: a job's keepProven keeps the newest N backups a restore drill proved (default 1), whatever
    keepLast says; a failed drill protects nothing; 0 turns it off."""
    from typing import cast

    from etcdwarden.format import drill as drill_format
    from etcdwarden.format.names import BackupNames
    from etcdwarden.repository.local import LocalRepository
    from tests.repository.fake import put_backup
    from tests.repository.test_retention_proven import record

    ids = [f"2026-01-01_{h:02d}0000" for h in range(6)]

    def run(retention: str, where: str) -> PruneOutcome:
        repo = LocalRepository(tmp_path / where)
        for i in ids:
            put_backup(repo, i)
        for i, passed in ((ids[0], True), (ids[1], True), (ids[2], False)):
            repo.write_bytes(BackupNames(i).drill, drill_format.dump(record(i, passed)))
        cfg_path = tmp_path / f"{where}.yaml"
        cfg_path.write_text(daemon_doc(tmp_path / where, election=False)
                            + JOB.replace("{keepLast: 2, minKeep: 1}", retention))
        cfg = load_config([cfg_path])
        job = next(j for j in cfg.backups if j.name == "hourly")
        return asyncio.run(DefaultRunner(cast(EtcdClient, None), cfg).prune(job))

    two = run("{keepLast: 2, keepProven: 2}", "two")
    assert two.ok and sorted(two.deleted) == [ids[2], ids[3]], two
    assert two.kept == 4
    default = run("{keepLast: 2}", "default")
    assert default.ok and sorted(default.deleted) == [ids[0], ids[2], ids[3]], default
    off = run("{keepLast: 2, keepProven: 0}", "off")
    assert off.ok and sorted(off.deleted) == ids[:4], off
    assert all("(keepLast)" in why for why in off.reasons.values()), off.reasons

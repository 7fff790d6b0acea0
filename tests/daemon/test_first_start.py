"""Issue 11 item 16: a first start runs nothing off its schedule.

A job with no recorded run waits for its first slot (a rolling defrag with moveLeader used to run at
whatever hour the daemon was installed); the one exception is a backup whose repository holds no complete
backup of this cluster, which runs at once and says why. Catch-up after downtime stays for backups (one
run); a missed defragmentation waits for its next slot. The first slot is logged in the schedule's zone.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from etcdwarden.daemon.jobs import JobExecutor
from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.schedule import Schedule, local_time
from etcdwarden.daemon.state import JobState, MemoryStateStore
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.conftest import etcdctl
from tests.daemon.helpers import FakeClock, ScriptedRunner, arun, daemon_doc, manifests

UTC = dt.UTC
JOBS = ("backups:\n  - name: nightly\n    schedule: '0 3 * * *'\n    timeZone: Europe/Berlin\n"
        "    repository: etcd-backup-pvc\n    retention: {keepLast: 7}\n"
        "defrag:\n  - name: nightly-defrag\n    schedule: '30 3 * * *'\n    timeZone: Europe/Berlin\n"
        "    rule: null\n    moveLeader: true\n    wait: 0s\n")
DEFRAG = Schedule("30 3 * * *", "Europe/Berlin")
BACKUP = Schedule("0 3 * * *", "Europe/Berlin")


def once(path: Path) -> tuple[int, list[dict[str, object]], str]:
    res = cli("-w", "json", "daemon", "--once", "--config", str(path))
    assert "Traceback" not in res.err, res.err
    return res.code, json.loads(res.out)["runs"] if res.out.strip() else [], res.err


def first_slot_line(job: str, schedule: Schedule) -> list[str]:
    """The log text naming the first slot, for the slot after now (or after the next, if one passes meanwhile)."""
    nxt = schedule.next_after(dt.datetime.now(UTC))
    return [f"job {job}: no run recorded yet; its first run is at its first slot, {local_time(schedule, t)}"
            for t in (nxt, schedule.next_after(nxt))]


def record(cluster: LocalCluster, key: str, prefix: str = "/etcdwarden/daemon/") -> JobState:
    out = etcdctl(cluster, "get", f"{prefix}state/{key}", "--print-value-only").strip()
    return JobState.from_json(out.encode())


def test_first_start_runs_only_the_backup_of_an_empty_repository(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    path = tmp_path / "daemon.yaml"
    path.write_text(daemon_doc(repo, etcd1.endpoints) + JOBS)
    code, runs, err = once(path)
    assert code == 0, err
    # the defrag (moveLeader!) did not run at install time; the backup did, because there was none
    assert [(r["job"], r["result"]) for r in runs] == [("nightly", "success")], err
    assert len(manifests(repo)) == 1
    assert ("job nightly runs now: repository etcd-backup-pvc holds no complete backup of this cluster: a first "
            "backup is taken now instead of waiting for the first slot") in err
    assert any(line in err for line in first_slot_line("nightly-defrag", DEFRAG)), err
    assert "CET (Europe/Berlin)" in err or "CEST (Europe/Berlin)" in err
    st = record(etcd1, "defrag/nightly-defrag")
    assert st.first_seen is not None and st.last_finished is None and st.first_run is None and st.successes == 0
    # the next start: nothing is due (the backup's next slot is tomorrow 03:00 Berlin, the defrag's 03:30)
    code, runs, err = once(path)
    assert code == 0 and runs == [], err
    assert len(manifests(repo)) == 1


def test_a_complete_backup_of_this_cluster_makes_the_backup_wait(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert cli("backup", str(repo), "--endpoints", ",".join(etcd1.endpoints)).code == 0
    path = tmp_path / "daemon.yaml"
    path.write_text(daemon_doc(repo, etcd1.endpoints) + JOBS)
    code, runs, err = once(path)
    assert code == 0 and runs == [], err
    assert any(line in err for line in first_slot_line("nightly", BACKUP)), err
    assert len(manifests(repo)) == 1

    # a complete backup of *another* cluster does not count: a new schedule backs this one up at once
    (manifest,) = manifests(repo)
    doc = json.loads(manifest.read_text())
    doc["cluster_id"] = "deadbeef"
    manifest.write_text(json.dumps(doc))
    path.write_text(daemon_doc(repo, etcd1.endpoints, prefix="/other-agents/") + JOBS)
    time.sleep(1.05)  # backup IDs have a one-second resolution
    code, runs, err = once(path)
    assert code == 0 and [(r["job"], r["result"]) for r in runs] == [("nightly", "success")], err
    assert "holds no complete backup of this cluster" in err and len(manifests(repo)) == 2


@pytest.mark.unit
@arun
async def test_catch_up_after_downtime_is_for_backups_only(tmp_path: Path) -> None:
    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", election=False) + JOBS)
    cfg = load_config([p])
    clock = FakeClock(dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC))  # a Wednesday, 14:00 in Berlin
    runner = ScriptedRunner(existing=3)  # the repository already holds backups of this cluster
    store = MemoryStateStore()
    ex = JobExecutor(cfg, runner, store, "agent-a", clock)

    async def tick() -> list[str]:
        states = await store.load()
        await ex.adopt(clock(), states)
        out = []
        while due := ex.due_jobs(clock(), await store.load()):
            job, d = due[0]
            rec = await ex.run(job, d, await store.load())
            out.append(f"{rec.name}:{'catch-up' if d.missed else 'on time'}")
        return out

    assert await tick() == []  # installed at 14:00: nothing runs
    assert runner.probes == ["nightly"]
    assert ex.next_wakeup(clock(), await store.load()) == dt.datetime(2024, 5, 2, 1, 0, tzinfo=UTC)
    clock.now = dt.datetime(2024, 5, 2, 1, 0, 5, tzinfo=UTC)  # 03:00:05 Berlin
    assert await tick() == ["nightly:on time"]
    clock.now = dt.datetime(2024, 5, 2, 1, 30, 5, tzinfo=UTC)  # 03:30:05 Berlin
    assert await tick() == ["nightly-defrag:on time"]
    # down for a week, back at 14:00: one catch-up backup; the missed defrag waits for its next slot
    clock.now = dt.datetime(2024, 5, 9, 12, 0, tzinfo=UTC)
    assert await tick() == ["nightly:catch-up"]
    clock.now = dt.datetime(2024, 5, 10, 1, 30, 5, tzinfo=UTC)  # 03:30:05: the 03:00 backup slot is 30 min late
    assert await tick() == ["nightly:catch-up", "nightly-defrag:on time"]
    st = (await store.load())["defrag/nightly-defrag"]
    assert st.successes == 2 and st.last_slot == dt.datetime(2024, 5, 10, 1, 30, tzinfo=UTC)
    assert runner.probes == ["nightly"]  # the repository is looked at once, at the first start


@pytest.mark.unit
@arun
async def test_a_first_start_just_after_a_slot_is_on_time_for_it(tmp_path: Path) -> None:
    """A ``--once`` CronJob given the backups' schedule starts a few seconds after the slot: that slot is its
    first one (within the 5-minute tolerance), not the next day's."""
    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", election=False) + JOBS)
    cfg = load_config([p])
    clock = FakeClock(dt.datetime(2024, 5, 2, 1, 0, 20, tzinfo=UTC))  # 03:00:20 Berlin
    runner = ScriptedRunner(existing=3)
    store = MemoryStateStore()
    ex = JobExecutor(cfg, runner, store, "agent-a", clock)
    await ex.adopt(clock(), await store.load())
    (job, due), = ex.due_jobs(clock(), await store.load(), use_jitter=False)
    assert job.name == "nightly" and due.slot == dt.datetime(2024, 5, 2, 1, 0, tzinfo=UTC) and not due.missed
    clock.now = dt.datetime(2024, 5, 2, 1, 36, tzinfo=UTC)  # 03:36: six minutes after the defrag's slot
    store2 = MemoryStateStore()
    ex2 = JobExecutor(cfg, runner, store2, "agent-a", clock)
    await ex2.adopt(clock(), await store2.load())
    assert [j.name for j, _ in ex2.due_jobs(clock(), await store2.load())] == []

"""The daemon's restore drills (``drills:``): configuration, the schedule, the budget, the metric and its alert."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from etcdwarden.daemon.drills import DrillJobOutcome, in_niced_thread
from etcdwarden.daemon.jobs import JobExecutor
from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.metrics import DaemonMetrics
from etcdwarden.daemon.observe import Observer
from etcdwarden.daemon.runner import DefaultRunner
from etcdwarden.daemon.spec import DaemonConfig, DrillSpec
from etcdwarden.daemon.state import FAILURE, SUCCESS, MemoryStateStore
from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.daemon.helpers import FakeClock, ScriptedRunner, arun, daemon_doc

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
DRILL = "drills:\n  - name: nightly-drill\n    repository: etcd-backup-pvc\n"
BACKUP = ("backups:\n  - name: hourly\n    schedule: '0 * * * *'\n    timeZone: UTC\n"
          "    repository: etcd-backup-pvc\n")


def config(tmp_path: Path, extra: str, endpoints: list[str] | None = None) -> DaemonConfig:
    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", endpoints=endpoints, election=False, tick="0.05s") + extra)
    return load_config([p])


class DrillingRunner(ScriptedRunner):
    """The scripted runner with a ``drill``: passes unless ``drill_fails``."""

    drill_fails: bool = False

    async def drill(self, job: DrillSpec) -> DrillJobOutcome:
        self.calls.append(f"drill:{job.name}")
        if self.drill_fails:
            return DrillJobOutcome(ok=False, failed={"2024-05-01_040000": "figures: hash_kv differs"},
                                   error="backup 2024-05-01_040000 unproven: figures: hash_kv differs")
        return DrillJobOutcome(ok=True, passed=["2024-05-01_040000"])


@pytest.mark.unit
def test_the_drills_section(tmp_path: Path) -> None:
    cfg = config(tmp_path, DRILL)
    [d] = cfg.drills
    assert d.key == "drill/nightly-drill" and d.repository == "etcd-backup-pvc"
    o = d.options
    # default: the newest backup once a day, niced, one at a time (the daemon runs one job at a time)
    assert d.schedule is not None and d.schedule.expr == "30 4 * * *" and o.select == "newest"
    assert o.nice == 10 and o.max_age == 7 * 86400 and o.timeout == 3600 and o.work_dir is None
    assert d in cfg.scheduled and cfg.job("drill/nightly-drill") is d
    assert cfg.summary(T0)["drills"] == [{**cfg.summary(T0)["drills"][0], "repository": "etcd-backup-pvc",  # type: ignore[index]
                                          "select": "newest"}]
    with pytest.raises(UsageError, match="unknown repository 'nope'"):
        config(tmp_path, DRILL.replace("repository: etcd-backup-pvc", "repository: nope"))
    with pytest.raises(UsageError, match="nice"):
        config(tmp_path, DRILL + "    nice: 25\n")
    cfg = config(tmp_path, DRILL + "    select: all-unproven\n    maxAge: 2d\n    workDir: /var/tmp\n")
    assert cfg.drills[0].options.select == "all-unproven" and cfg.drills[0].options.max_age == 2 * 86400


async def _run_due(ex: JobExecutor, store: MemoryStateStore, now: dt.datetime) -> list[str]:
    out: list[str] = []
    while True:
        states = await store.load()
        await ex.adopt(now, states)
        states = await store.load()
        due = ex.due_jobs(now, states)
        if not due:
            return out
        job, d = due[0]
        rec = await ex.run(job, d, states)
        out.append(f"{rec.name}:{rec.result}")


@pytest.mark.unit
@arun
async def test_a_drill_runs_at_its_slot_and_a_failed_one_fails_the_run(tmp_path: Path) -> None:
    cfg = config(tmp_path, DRILL)
    clock = FakeClock(T0)
    runner = DrillingRunner()
    store = MemoryStateStore()
    ex = JobExecutor(cfg, runner, store, "agent-a", clock)
    assert await _run_due(ex, store, clock()) == []  # a new drill waits for its first slot
    clock.now = dt.datetime(2024, 5, 2, 4, 30, 2, tzinfo=dt.UTC)
    assert await _run_due(ex, store, clock()) == ["nightly-drill:success"]
    st = (await store.load())["drill/nightly-drill"]
    assert st.details == {"passed": ["2024-05-01_040000"], "failed": [], "skipped": 0}
    runner.drill_fails = True
    clock.now = dt.datetime(2024, 5, 3, 4, 30, 2, tzinfo=dt.UTC)
    assert await _run_due(ex, store, clock()) == ["nightly-drill:failure"]
    st = (await store.load())["drill/nightly-drill"]
    assert st.last_result == FAILURE and "unproven" in (st.last_error or "") and st.failures == 1
    assert st.retry_at is None  # a drill is not retried: the next slot drills again
    # a runner that cannot drill fails the run (never a silent skip)
    ex.runner = ScriptedRunner()
    clock.now = dt.datetime(2024, 5, 4, 4, 30, 2, tzinfo=dt.UTC)
    assert await _run_due(ex, store, clock()) == ["nightly-drill:failure"]
    assert "no drill()" in ((await store.load())["drill/nightly-drill"].last_error or "")
    metrics = DaemonMetrics("a", "0")
    agent = types.SimpleNamespace(config=cfg, metrics=metrics, clock=clock)
    obs = Observer(agent)
    obs.job_infos()
    obs.on_state("drill/nightly-drill", (await store.load())["drill/nightly-drill"])
    text = metrics.render().decode()
    assert 'etcdwarden_drill_failures_total{job_name="nightly-drill",repository="etcd-backup-pvc"} 2.0' in text
    assert 'etcdwarden_drill_last_run_success{job_name="nightly-drill",repository="etcd-backup-pvc"} 0.0' in text


def _nice_of(tid: int) -> int:
    return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.unit
@arun
async def test_the_niced_thread_and_its_timeout() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    abort = threading.Event()

    def work() -> int:
        return _nice_of(threading.get_native_id())

    assert await in_niced_thread(work, 7, abort, 10.0) == min(19, base + 7) or base >= 7
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the agent's own threads are untouched
    stopped = threading.Event()

    def slow() -> None:
        abort.wait(10)
        stopped.set()

    with pytest.raises(EtcdwardenError, match="longer than its timeout"):
        await in_niced_thread(slow, 0, abort, 0.2)
    assert abort.is_set() and stopped.is_set()  # asked to stop, and waited for


def _children_nice(ignore: set[int]) -> dict[str, int]:
    """Niceness of this process's etcd and etcdutl children (as they run), but those in ``ignore``."""
    out: dict[str, int] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in ignore:
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            rest = fields[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[1]) == os.getpid() and comm in ("etcd", "etcdutl"):
            out[comm] = int(rest[16])
    return out


def test_a_scheduled_drill_of_a_real_backup_and_the_proven_metric(etcd1: LocalCluster, tmp_path: Path) -> None:
    """A backup job, then the drill job at its slot (real etcd, real repository, niced etcd), then the metric the
    alert reads: the time of the newest backup a drill proved restorable."""
    cfg = config(tmp_path, BACKUP + DRILL, endpoints=etcd1.endpoints)
    clock = FakeClock(T0)
    cluster = {m.pid for m in etcd1.members if m.pid is not None}  # the cluster's own etcd runs at its own

    async def go() -> tuple[list[str], dict[str, int], str, Any]:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            await c.put(b"/registry/configmaps/ns/c", b'{"kind":"ConfigMap"}')
            runner = DefaultRunner(c, cfg)
            store = MemoryStateStore()
            ex = JobExecutor(cfg, runner, store, "agent-a", clock)
            ran = await _run_due(ex, store, clock())  # the repository is empty: a first backup at once
            metrics = DaemonMetrics("a", "0")
            agent = types.SimpleNamespace(config=cfg, runner=runner, metrics=metrics, clock=clock)
            obs = Observer(agent)
            await obs._refresh_catalogs()
            before = metrics.render().decode()
            nice: dict[str, int] = {}

            async def watch() -> None:
                while True:
                    nice.update(_children_nice(cluster))
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            clock.now = dt.datetime(2024, 5, 2, 4, 30, 1, tzinfo=dt.UTC)
            try:
                ran += await _run_due(ex, store, clock())
            finally:
                watcher.cancel()
            await obs._refresh_catalogs()
            st = (await store.load())["drill/nightly-drill"]
            return ran, nice, before + "\n----\n" + metrics.render().decode(), st

    ran, nice, text, st = asyncio.run(go())
    assert ran[0] == "hourly:success" and ran[-1] == "nightly-drill:success", (ran, st.last_error)
    assert st.last_result == SUCCESS and len(st.details["passed"]) == 1
    [record] = list((tmp_path / "repo").glob("drill_*.json"))
    backup_id = record.name[len("drill_"):-len(".json")]
    before, after = text.split("\n----\n")
    # before the first drill: 0 (never proven) for the repository a drill job covers: the alert fires
    assert 'etcdwarden_last_proven_restorable_timestamp{repository="etcd-backup-pvc"} 0.0' in before
    t = dt.datetime.strptime(backup_id, "%Y-%m-%d_%H%M%S").replace(tzinfo=dt.UTC).timestamp()
    m = re.search(r'^etcdwarden_last_proven_restorable_timestamp\{repository="etcd-backup-pvc"\} (\S+)$', after,
                  re.MULTILINE)
    assert m is not None and float(m.group(1)) == t
    # etcd (and etcdutl, when seen) ran niced as configured
    assert nice.get("etcd", 0) >= 10, nice
    assert all(v >= 10 for v in nice.values()), nice

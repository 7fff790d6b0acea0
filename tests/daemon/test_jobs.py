"""Running jobs against an in-memory state store and a scripted runner, with an injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
from pathlib import Path
from typing import cast

import pytest

from etcdwarden.daemon.jobs import JobExecutor
from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.service import Daemon
from etcdwarden.daemon.spec import DaemonConfig
from etcdwarden.daemon.state import ABORTED, FAILURE, SUCCESS, JobState, MemoryStateStore
from etcdwarden.errors import Unreachable
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.election import LeadershipLost
from etcdwarden.etcd.endpoints import Endpoint, parse_endpoint
from tests.daemon.helpers import SEED_RECURRING, SEED_SINGLE, FakeClock, ScriptedRunner, arun, daemon_doc

pytestmark = pytest.mark.unit

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DAILY = ("backups:\n  - name: nightly\n    schedule: '0 3 * * *'\n    timeZone: Europe/Berlin\n"
         "    repository: etcd-backup-pvc\n    retention: {keepLast: 7, minKeep: 2}\n")


def config(tmp_path: Path, extra: str = DAILY, docs: tuple[str, ...] = ()) -> DaemonConfig:
    p = tmp_path / "d.yaml"
    p.write_text("---\n".join([daemon_doc(tmp_path / "repo", election=False, tick="0.05s") + extra, *docs]))
    return load_config([p])


def executor(cfg: DaemonConfig, runner: ScriptedRunner, clock: FakeClock,
             store: MemoryStateStore | None = None) -> tuple[JobExecutor, MemoryStateStore]:
    store = store or MemoryStateStore()
    return JobExecutor(cfg, runner, store, "agent-a", clock), store


async def run_due(ex: JobExecutor, store: MemoryStateStore, now: dt.datetime) -> list[str]:
    results: list[str] = []
    while True:
        states = await store.load()
        await ex.adopt(now, states)  # as the daemon's loop does
        await ex.drop_stale_retries(now, states)
        states = await store.load()
        due = ex.due_jobs(now, states)
        if not due:
            return results
        job, d = due[0]
        rec = await ex.run(job, d, states)
        results.append(f"{rec.name}:{rec.result}")


@arun
async def test_first_run_then_schedule_then_catch_up_once(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner()
    ex, store = executor(config(tmp_path), runner, clock)
    assert await run_due(ex, store, clock()) == ["nightly:success"]
    assert runner.calls == ["backup:nightly", "prune:nightly"]  # retention after the successful backup
    clock.advance(hours=1)
    assert await run_due(ex, store, clock()) == []
    clock.now = dt.datetime(2024, 5, 2, 1, 0, 5, tzinfo=UTC)  # 03:00:05 in Berlin (CEST)
    assert await run_due(ex, store, clock()) == ["nightly:success"]
    # a week of downtime: one catch-up run, not seven
    clock.now = dt.datetime(2024, 5, 9, 9, 0, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == ["nightly:success"]
    st = (await store.load())["backup/nightly"]
    assert st.successes == 3 and st.last_slot == dt.datetime(2024, 5, 9, 1, 0, tzinfo=UTC)
    assert st.last_size == 1234 and st.last_revision == 42 and st.prune is not None and st.prune["ok"]


@arun
async def test_failure_counts_as_a_run_and_never_prunes(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(fail=True)
    ex, store = executor(config(tmp_path, DAILY.replace("    retention:", "    retry: {attempts: 1}\n    retention:")),
                         runner, clock)
    assert await run_due(ex, store, clock()) == ["nightly:failure"]
    assert runner.calls == ["backup:nightly"]
    st = (await store.load())["backup/nightly"]
    assert st.failures == 1 and st.last_result == FAILURE and "every member" in (st.last_error or "")
    assert st.last_success is None and st.running is None and st.retry_at is None and st.final_failures == 1
    clock.advance(minutes=5)
    assert await run_due(ex, store, clock()) == []  # retry.attempts 1: the next slot tries again


@arun
async def test_prune_failure_is_recorded_but_backup_succeeds(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(prune_fail=True)
    ex, store = executor(config(tmp_path), runner, clock)
    assert await run_due(ex, store, clock()) == ["nightly:success"]
    st = (await store.load())["backup/nightly"]
    assert st.prune_failures == 1 and st.prune is not None and "not available" in st.prune["error"]


@arun
async def test_single_backups_run_once_even_after_failure(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(fail=True)
    cfg = config(tmp_path, "", (SEED_SINGLE,))
    ex, store = executor(cfg, runner, clock)
    assert await run_due(ex, store, clock()) == ["etcd-single-backup:failure"]
    clock.advance(days=3)
    assert await run_due(ex, store, clock()) == []
    # the same EtcdBackup re-created (a new uid) is a new request
    cfg2 = config(tmp_path, "", (SEED_SINGLE.replace("namespace: openshift-etcd",
                                                     "namespace: openshift-etcd\n  uid: 1234-abcd"),))
    ex2, _ = executor(cfg2, ScriptedRunner(), clock, store)
    assert await run_due(ex2, store, clock()) == ["etcd-single-backup:success"]
    assert await run_due(ex2, store, clock()) == []


@arun
async def test_a_deposed_leader_cannot_start_a_job(tmp_path: Path) -> None:
    runner = ScriptedRunner()
    ex, store = executor(config(tmp_path), runner, FakeClock(T0))
    store.writable = False
    with pytest.raises(LeadershipLost):  # it cannot even record that it saw the job
        await ex.adopt(T0, {})
    states = {"backup/nightly": JobState(first_seen=T0, first_run="empty repository")}
    job, d = ex.due_jobs(T0, states)[0]
    with pytest.raises(LeadershipLost):
        await ex.run(job, d, states)
    assert runner.calls == []


@arun
async def test_stale_running_marker_is_cleared_by_a_new_leader(tmp_path: Path) -> None:
    ex, store = executor(config(tmp_path), ScriptedRunner(), FakeClock(T0))
    await store.save("backup/nightly", JobState(running={"agent": "dead-agent", "slot": T0.isoformat()}))
    states = await store.load()
    await ex.clear_stale(states)
    st = (await store.load())["backup/nightly"]
    assert st.running is None and st.last_result == ABORTED and st.last_finished is None


@arun
async def test_defrag_job(tmp_path: Path) -> None:
    extra = "defrag:\n  - name: weekly-defrag\n    schedule: '@weekly'\n    moveLeader: true\n"
    runner = ScriptedRunner()
    clock = FakeClock(T0)
    ex, store = executor(config(tmp_path, extra), runner, clock)
    assert await run_due(ex, store, T0) == []  # no run recorded: it waits for its first slot (Sunday 00:00)
    clock.now = dt.datetime(2024, 5, 5, 0, 0, 1, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == ["weekly-defrag:success"]
    st = (await store.load())["defrag/weekly-defrag"]
    assert st.details == {"defragmented": 1, "skipped": 2}


class NoEtcd:
    """Just enough of a client for a daemon whose state is in memory (refreshes fail, visibly)."""

    config = None

    async def member_list(self, linearizable: bool = True) -> list[object]:
        raise Unreachable("no etcd in this test")

    def endpoint(self, text: str) -> Endpoint:
        return parse_endpoint(text)


def daemon(cfg: DaemonConfig, runner: ScriptedRunner, store: MemoryStateStore, clock: FakeClock,
           **kw: object) -> Daemon:
    return Daemon(cfg, cast(EtcdClient, NoEtcd()), runner_factory=lambda c, k: runner, store=store,
                  clock=clock, listen="127.0.0.1:0", agent="agent-a", **kw)  # type: ignore[arg-type]


async def wait_for(cond: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.02)


@arun
async def test_sigterm_lets_a_running_job_finish_within_the_grace(tmp_path: Path) -> None:
    runner = ScriptedRunner(block=asyncio.Event())
    store = MemoryStateStore()
    d = daemon(config(tmp_path), runner, store, FakeClock(T0))
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(runner.started.wait(), 10)
    d.request_stop()
    await asyncio.sleep(0.1)
    assert not task.done()  # still finishing the job
    assert runner.block is not None
    runner.block.set()
    await asyncio.wait_for(task, 10)
    st = (await store.load())["backup/nightly"]
    assert st.last_result == SUCCESS and st.running is None


@arun
async def test_sigterm_aborts_a_job_after_the_grace_and_the_next_leader_reruns_it(tmp_path: Path) -> None:
    runner = ScriptedRunner(block=asyncio.Event())
    store = MemoryStateStore()
    cfg = config(tmp_path)
    cfg = DaemonConfig(**{**cfg.__dict__, "agent": cfg.agent.model_copy(update={"shutdown_grace": 0.2})})
    d = daemon(cfg, runner, store, FakeClock(T0))
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(runner.started.wait(), 10)
    d.request_stop()
    await asyncio.wait_for(task, 10)
    st = (await store.load())["backup/nightly"]
    assert st.last_result == ABORTED and st.running is None and st.last_finished is None
    # another agent takes over: the aborted run is due again
    runner2 = ScriptedRunner()
    report = await daemon(cfg, runner2, store, FakeClock(T0)).run_once()
    assert [r.result for r in report.records] == [SUCCESS] and runner2.calls[0] == "backup:nightly"


@arun
async def test_sighup_reload_adds_jobs_and_a_bad_reload_keeps_the_running_config(tmp_path: Path) -> None:
    runner = ScriptedRunner()
    store = MemoryStateStore()
    path = tmp_path / "d.yaml"
    base = daemon_doc(tmp_path / "repo", election=False, tick="0.05s")
    path.write_text(base + DAILY)
    d = daemon(load_config([path]), runner, store, FakeClock(T0), reload=lambda: load_config([path]))
    d.install_signal_handlers()  # first, so the signals below never reach pytest itself
    task = asyncio.create_task(d.run())
    try:
        await wait_for(lambda: "backup:nightly" in runner.calls)
        path.write_text(base + DAILY + "---\n" + SEED_SINGLE)
        os.kill(os.getpid(), signal.SIGHUP)  # the real signal, through the loop's handler
        await wait_for(lambda: "backup:etcd-single-backup" in runner.calls)
        path.write_text(base + DAILY.replace("0 3 * * *", "0 3 * *"))
        assert not await d.reload()
        assert d.metrics.view.config_ok is False and d.metrics.view.config_reload_failures == 1
        assert len(d.config.singles) == 1  # the previous configuration is still in force
        assert b"etcdwarden_daemon_config_last_reload_successful 0.0" in d.metrics.render()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the daemon: a clean stop
        await asyncio.wait_for(task, 10)


@arun
async def test_seed_backup_cr_runs_under_the_daemon(tmp_path: Path) -> None:
    runner = ScriptedRunner()
    store = MemoryStateStore()
    report = await daemon(config(tmp_path, "", (SEED_RECURRING,)), runner, store, FakeClock(T0)).run_once()
    assert [(r.name, r.result) for r in report.records] == [("etcd-recurring-backup", SUCCESS)]
    assert runner.calls == ["backup:etcd-recurring-backup", "prune:etcd-recurring-backup"]

"""Bounded retries of failed scheduled backups, against an injected clock: nothing sleeps."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import cast

import pytest

from etcdwarden.daemon.config import RetryPolicy
from etcdwarden.daemon.jobs import JobExecutor
from etcdwarden.daemon.loader import ConfigError, load_config
from etcdwarden.daemon.metrics import DaemonMetrics, JobInfo
from etcdwarden.daemon.service import Daemon
from etcdwarden.daemon.spec import DaemonConfig
from etcdwarden.daemon.state import FAILURE, SUCCESS, JobState, MemoryStateStore
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.election import LeadershipLost
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.daemon.helpers import SEED_RECURRING, FakeClock, ScriptedRunner, arun, daemon_doc
from tests.daemon.test_jobs import NoEtcd, run_due, wait_for

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NEXT_DAILY = dt.datetime(2024, 5, 2, 1, 0, tzinfo=UTC)  # 03:00 in Berlin (CEST)
DAILY = ("backups:\n  - name: nightly\n    schedule: '0 3 * * *'\n    timeZone: Europe/Berlin\n"
         "    repository: etcd-backup-pvc\n    retention: {keepLast: 7, minKeep: 2}\n")
HOURLY = ("backups:\n  - name: hourly\n    schedule: '0 * * * *'\n    repository: etcd-backup-pvc\n"
          "    retention: {keepLast: 7}\n    retry: {attempts: 5, backoff: 20m, maxBackoff: 2h}\n")


def config(tmp_path: Path, extra: str = DAILY, docs: tuple[str, ...] = (), agent: str = "") -> DaemonConfig:
    p = tmp_path / "d.yaml"
    doc = daemon_doc(tmp_path / "repo", election=False, tick="0.05s").replace("agent:\n", "agent:\n" + agent)
    p.write_text("---\n".join([doc + extra, *docs]))
    return load_config([p])


def executor(cfg: DaemonConfig, runner: ScriptedRunner, clock: FakeClock,
             store: MemoryStateStore | None = None) -> tuple[JobExecutor, MemoryStateStore]:
    store = store or MemoryStateStore()
    return JobExecutor(cfg, runner, store, "agent-a", clock), store


async def state(store: MemoryStateStore, key: str = "backup/nightly") -> JobState:
    return (await store.load())[key]


# -- configuration ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_defaults_global_default_and_per_job_override(tmp_path: Path) -> None:
    cfg = config(tmp_path, DAILY, (SEED_RECURRING,))
    nightly, cr = cfg.backups
    # an operator's expectation: two retries with exponential backoff, the Backup CR included (it has no field)
    assert nightly.retry == cr.retry == RetryPolicy()
    assert (cr.retry.attempts, cr.retry.backoff, cr.retry.max_backoff) == (3, 300.0, 1800.0)
    assert [RetryPolicy().delay(n) for n in (1, 2, 3, 4, 5, 6)] == [300, 600, 1200, 1800, 1800, 1800]
    assert cfg.singles == () and nightly.retries and cr.retries
    # agent.retry is the default of every scheduled backup; a job's own retry overrides field by field
    job = DAILY.replace("    retention:", "    retry: {attempts: 5}\n    retention:")
    cfg = config(tmp_path, job, (SEED_RECURRING,), agent="  retry: {backoff: 1m, maxBackoff: 4m}\n")
    nightly, cr = cfg.backups
    assert (nightly.retry.attempts, nightly.retry.backoff, nightly.retry.max_backoff) == (5, 60.0, 240.0)
    assert (cr.retry.attempts, cr.retry.backoff, cr.retry.max_backoff) == (3, 60.0, 240.0)
    # a backoff above the inherited maxBackoff is not a contradiction: it is simply a constant backoff
    assert RetryPolicy().merged(RetryPolicy.model_validate({"backoff": "1h"})).delay(3) == 3600
    res = cli("-w", "json", "config", "validate", str(tmp_path / "d.yaml"))
    assert res.code == 0 and '"maxBackoff": 240.0' in res.out


@pytest.mark.unit
@pytest.mark.parametrize(("snippet", "expected"), [
    ("    retry: {attempts: 0}\n", "backups[0].retry.attempts: Input should be greater than or equal to 1"),
    ("    retry: {attempts: 3, tries: 2}\n", "backups[0].retry.tries: unknown field 'tries'"),
    ("    retry: {backoff: soon}\n", "backups[0].retry.backoff: invalid duration 'soon'"),
    ("    retry: {backoff: 0s}\n", "backups[0].retry.backoff: Input should be greater than 0"),
    ("    retry: {backoff: 10m, maxBackoff: 5m}\n", "backups[0].retry: backoff 10m is above maxBackoff 5m"),
    ("    retry: 3\n", "backups[0].retry: Input should be a valid dictionary"),
])
def test_bad_retry_fields_one_message_each_with_path(tmp_path: Path, snippet: str, expected: str) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(daemon_doc(tmp_path / "r") + DAILY + snippet)
    with pytest.raises(ConfigError) as ei:
        load_config([path])
    found = [str(p) for p in ei.value.problems]
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.unit
def test_bad_global_retry_is_reported_at_its_path(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(daemon_doc(tmp_path / "r").replace("agent:\n", "agent:\n  retry: {attempts: 11}\n") + DAILY)
    res = cli("config", "validate", str(path))
    assert res.code == 2 and "agent.retry.attempts: Input should be less than or equal to 10" in res.err


# -- the executor --------------------------------------------------------------------------------------


@pytest.mark.unit
@arun
async def test_transient_failure_then_success_within_the_slot(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(fail_next=1)
    ex, store = executor(config(tmp_path), runner, clock)
    assert await run_due(ex, store, clock()) == ["nightly:failure"]
    st = await state(store)
    assert st.retry_at == T0 + dt.timedelta(minutes=5) and st.attempt == 1 and st.last_result == FAILURE
    assert runner.calls == ["backup:nightly"]  # no retention after a failed attempt
    clock.advance(minutes=4, seconds=59)
    assert await run_due(ex, store, clock()) == []  # not before the backoff
    assert ex.next_wakeup(clock(), await store.load()) == T0 + dt.timedelta(minutes=5)
    clock.advance(seconds=1)
    assert await run_due(ex, store, clock()) == ["nightly:success"]
    assert runner.calls == ["backup:nightly", "backup:nightly", "prune:nightly"]
    st = await state(store)
    assert (st.attempt, st.retries, st.failures, st.successes, st.final_failures) == (2, 1, 1, 1, 0)
    assert st.retry_at is None and st.last_result == SUCCESS and st.last_slot == T0
    assert [(e["attempt"], e["result"]) for e in st.attempt_log] == [(1, FAILURE), (2, SUCCESS)]
    assert st.attempt_log[0]["then"] == f"retry at {(T0 + dt.timedelta(minutes=5)).isoformat()}"
    clock.advance(hours=1)
    assert await run_due(ex, store, clock()) == []  # the slot is done


@pytest.mark.unit
@arun
async def test_persistent_failure_exactly_n_attempts_then_failed_and_the_next_slot_runs(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(fail=True)
    ex, store = executor(config(tmp_path), runner, clock)
    results = []
    for _ in range(200):  # a tick every minute for ~3 hours: exactly 3 attempts, 5m then 10m apart
        results += await run_due(ex, store, clock())
        clock.advance(minutes=1)
    assert results == ["nightly:failure"] * 3
    assert runner.calls == ["backup:nightly"] * 3  # never any retention
    st = await state(store)
    assert (st.attempt, st.retries, st.failures, st.final_failures, st.successes) == (3, 2, 3, 1, 0)
    assert st.last_result == FAILURE and st.retry_at is None and st.last_success is None
    assert [e["started"] for e in st.attempt_log] == [
        T0.isoformat(), (T0 + dt.timedelta(minutes=5)).isoformat(), (T0 + dt.timedelta(minutes=15)).isoformat()]
    assert st.attempt_log[-1]["then"] == "no retry left: 3 attempts failed"
    # the figures Prometheus sees: each failed attempt counted, two of them retries, one final failure
    m = DaemonMetrics("a", "0")
    m.view.jobs = {"backup/nightly": (JobInfo("backup/nightly", "nightly", "backup", "etcd-backup-pvc"), st)}
    text = m.render().decode()
    lab = '{job_name="nightly",kind="backup",repository="etcd-backup-pvc"}'
    for line in (f"etcdwarden_backup_failures_total{lab} 3.0", f"etcdwarden_backup_retries_total{lab} 2.0",
                 f"etcdwarden_backup_final_failures_total{lab} 1.0", f"etcdwarden_backup_retry_pending{lab} 0.0",
                 f"etcdwarden_backup_last_attempt{lab} 3.0", f"etcdwarden_backup_last_run_success{lab} 0.0"):
        assert line in text, line
    # the next slot runs normally, as attempt 1 with a fresh attempt log
    runner.fail = False
    clock.now = NEXT_DAILY + dt.timedelta(seconds=5)
    assert await run_due(ex, store, clock()) == ["nightly:success"]
    st = await state(store)
    assert st.attempt == 1 and st.last_slot == NEXT_DAILY and len(st.attempt_log) == 1 and st.final_failures == 1


@pytest.mark.unit
@arun
async def test_a_retry_that_would_cross_the_next_slot_is_dropped(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2024, 5, 1, 9, 30, tzinfo=UTC))
    runner = ScriptedRunner()
    ex, store = executor(config(tmp_path, HOURLY), runner, clock)
    assert await run_due(ex, store, clock()) == ["hourly:success"]  # the first run
    runner.fail = True
    clock.now = dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == ["hourly:failure"]  # retry in 20m: 10:20, before 11:00
    clock.now = dt.datetime(2024, 5, 1, 10, 20, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == ["hourly:failure"]  # the next would be 40m later: 11:00
    st = await state(store, "backup/hourly")
    assert st.retry_at is None and st.final_failures == 1 and st.attempt == 2
    assert st.attempt_log[-1]["then"] == ("retry dropped: it would start at 2024-05-01T11:00:00+00:00, not before "
                                          "the next slot (2024-05-01T11:00:00+00:00)")
    clock.now = dt.datetime(2024, 5, 1, 10, 59, 59, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == []
    runner.fail = False
    clock.now = dt.datetime(2024, 5, 1, 11, 0, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == ["hourly:success"]
    st = await state(store, "backup/hourly")
    assert st.attempt == 1 and st.last_slot == clock.now


@pytest.mark.unit
@arun
async def test_downtime_drops_the_overtaken_retry_and_runs_one_catch_up(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(fail_next=1)
    ex, store = executor(config(tmp_path), runner, clock)
    assert await run_due(ex, store, clock()) == ["nightly:failure"]  # retry due 12:05
    clock.now = T0 + dt.timedelta(days=3)  # the agents were down for three days
    states = await store.load()
    due = ex.due_jobs(clock(), states)
    assert len(due) == 1 and due[0][1].attempt == 1  # one catch-up of the latest slot: no storm, no late retry
    assert await run_due(ex, store, clock()) == ["nightly:success"]
    st = await state(store)
    assert st.final_failures == 1 and st.retries == 0 and st.attempt == 1 and st.retry_at is None
    assert runner.calls == ["backup:nightly", "backup:nightly", "prune:nightly"]


@pytest.mark.unit
@arun
async def test_a_failed_attempt_that_runs_past_the_next_slot_lets_that_slot_run(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC))
    runner = ScriptedRunner(fail=True)
    ex, store = executor(config(tmp_path, HOURLY), runner, clock)
    runner.during = lambda: clock.advance(minutes=70)  # the attempt hangs past 11:00, then fails
    assert await run_due(ex, store, clock()) == ["hourly:failure"]
    st = await state(store, "backup/hourly")
    assert st.retry_at is None and "not before the next slot" in st.attempt_log[-1]["then"]
    # it failed at 11:10, after the 11:00 slot: that slot is not covered by a failure, it runs at once
    runner.during = None
    assert clock() == dt.datetime(2024, 5, 1, 11, 10, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == ["hourly:failure"]
    st = await state(store, "backup/hourly")
    assert [e["slot"] for e in st.attempt_log] == ["2024-05-01T11:00:00+00:00"]
    assert st.final_failures == 1 and st.retry_at == dt.datetime(2024, 5, 1, 11, 30, tzinfo=UTC)


@pytest.mark.unit
@arun
async def test_only_the_leader_retries_and_a_new_leader_continues_the_count(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cfg = config(tmp_path)
    runner = ScriptedRunner(fail_next=1)
    ex, store = executor(cfg, runner, clock)
    assert await run_due(ex, store, clock()) == ["nightly:failure"]
    clock.advance(minutes=5)
    store.writable = False  # this agent was deposed: it cannot record the start, so it does not run
    states = await store.load()
    (job, d), = ex.due_jobs(clock(), states)
    with pytest.raises(LeadershipLost):
        await ex.run(job, d, states)
    assert runner.calls == ["backup:nightly"]
    store.writable = True  # the new leader sees the pending retry in the job state and runs it as attempt 2
    runner2 = ScriptedRunner()
    ex2, _ = executor(cfg, runner2, clock, store)
    assert await run_due(ex2, store, clock()) == ["nightly:success"]
    st = await state(store)
    assert st.attempt == 2 and st.retries == 1 and runner2.calls == ["backup:nightly", "prune:nightly"]


@pytest.mark.unit
@arun
async def test_a_pending_retry_is_dropped_when_the_policy_no_longer_allows_it(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    ex, store = executor(config(tmp_path), ScriptedRunner(fail_next=1), clock)
    assert await run_due(ex, store, clock()) == ["nightly:failure"]
    ex.config = config(tmp_path, DAILY.replace("    retention:", "    retry: {attempts: 1}\n    retention:"))
    clock.advance(minutes=10)
    assert await run_due(ex, store, clock()) == []
    st = await state(store)
    assert st.retry_at is None and st.final_failures == 1 and "no longer retries" in st.attempt_log[-1]["then"]


# -- daemon --once ----------------------------------------------------------------------------------------


def once_daemon(cfg: DaemonConfig, runner: ScriptedRunner, store: MemoryStateStore, clock: FakeClock,
                slept: list[float]) -> Daemon:
    async def sleep(seconds: float) -> None:  # the injected clock moves; nothing waits
        slept.append(seconds)
        clock.advance(seconds=seconds)

    return Daemon(cfg, cast(EtcdClient, NoEtcd()), runner_factory=lambda c, k: runner, store=store, clock=clock,
                  listen="127.0.0.1:0", agent="cron", sleep=sleep)


@pytest.mark.unit
@arun
async def test_once_retries_within_the_run(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(fail_next=2)
    store = MemoryStateStore()
    slept: list[float] = []
    report = await once_daemon(config(tmp_path), runner, store, clock, slept).run_once()
    assert [(r.result, r.attempt) for r in report.records] == [(FAILURE, 1), (FAILURE, 2), (SUCCESS, 3)]
    assert report.ok and slept == [300.0, 600.0]
    assert report.as_json()["runs"][0]["retry_at"] == (T0 + dt.timedelta(minutes=5)).isoformat()
    assert runner.calls == ["backup:nightly"] * 3 + ["prune:nightly"]


@pytest.mark.unit
@arun
async def test_once_starts_no_retry_after_its_deadline(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(fail=True)
    store = MemoryStateStore()
    slept: list[float] = []
    report = await once_daemon(config(tmp_path), runner, store, clock, slept).run_once(deadline=600)
    # attempt 2 starts at +5m (within 10m); attempt 3 would start at +15m: dropped, the run ends failed
    assert [(r.result, r.attempt) for r in report.records] == [(FAILURE, 1), (FAILURE, 2)]
    assert not report.ok and slept == [300.0]
    assert "after the --once deadline" in report.records[-1].detail["then"]
    st = await state(store)
    assert st.retry_at is None and st.final_failures == 1 and st.last_result == FAILURE
    # a second --once run (e.g. Kubernetes re-running the pod) finds nothing due: the failure stays recorded
    again = await once_daemon(config(tmp_path), ScriptedRunner(), store, clock, slept).run_once()
    assert again.records == [] and again.note == "no job was due"


# -- the long-running agent and the command ------------------------------------------------------------------


@pytest.mark.unit
@arun
async def test_the_agent_loop_wakes_for_the_retry(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    runner = ScriptedRunner(fail_next=1)
    store = MemoryStateStore()
    d = Daemon(config(tmp_path), cast(EtcdClient, NoEtcd()), runner_factory=lambda c, k: runner, store=store,
               clock=clock, listen="127.0.0.1:0", agent="agent-a")
    task = asyncio.create_task(d.run())
    try:
        await wait_for(lambda: runner.calls == ["backup:nightly"] and "backup/nightly" in store.data)
        await asyncio.sleep(0.2)  # several ticks: the retry is not due yet
        assert runner.calls == ["backup:nightly"]
        clock.advance(minutes=5)
        await wait_for(lambda: "prune:nightly" in runner.calls)
        assert runner.calls == ["backup:nightly", "backup:nightly", "prune:nightly"]
        st = await state(store)
        assert st.attempt == 2 and st.last_result == SUCCESS
        assert b'etcdwarden_backup_retries_total{job_name="nightly"' in d.metrics.render()
    finally:
        d.request_stop()
        await asyncio.wait_for(task, 10)


def test_daemon_once_cli_retries_then_fails_for_good(etcd1: LocalCluster, tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    repo = tmp_path / "repo"
    doc = daemon_doc(repo, etcd1.endpoints).replace(f"url: file://{repo}", f"url: file://{blocked}/sub")
    path = tmp_path / "daemon.yaml"
    path.write_text(doc + "backups:\n  - name: quick\n    schedule: '0 3 * * *'\n    repository: etcd-backup-pvc\n"
                    "    retry: {attempts: 3, backoff: 50ms}\n")
    res = cli("daemon", "--once", "--config", str(path))
    assert res.code == 1, res.err
    lines = [line for line in res.out.splitlines() if line.startswith("backup quick")]
    assert len(lines) == 3, res.out
    assert "failure (attempt 1/3)" in lines[0] and "; retry at " in lines[0]
    assert "failure (attempt 3/3)" in lines[2] and "; no retry left: 3 attempts failed" in lines[2]
    events = [json.loads(line).get("event") for line in res.err.splitlines() if line.startswith("{")]
    assert events.count("job_retry_scheduled") == 2 and events.count("job_finished") == 1
    res = cli("-w", "json", "daemon", "--once", "--config", str(path))
    assert res.code == 0 and json.loads(res.out)["note"] == "no job was due"
